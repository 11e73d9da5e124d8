"""Conditions, history bound, the status merge patch."""

from __future__ import annotations

from datetime import timedelta

from domain_builders import T0

from fillprob_operator.api import HistoryEntry, Phase, RolloutStatus, State
from fillprob_operator.domain.status import (
    HISTORY_LIMIT,
    append_history,
    merge_patch,
    set_condition,
    state_conditions,
    status_patch,
)


def test_condition_keeps_last_transition_time_unless_status_flips() -> None:
    conditions = set_condition([], "Ready", False, "StepStarted", "a", T0, 1)
    later = T0 + timedelta(hours=1)
    same = set_condition(conditions, "Ready", False, "RolloutComplete", "b", later, 2)
    assert same[0].last_transition_time == T0
    assert (same[0].reason, same[0].message, same[0].observed_generation) == ("RolloutComplete", "b", 2)
    flipped = set_condition(same, "Ready", True, "TargetReached", "c", later, 2)
    assert flipped[0].last_transition_time == later and flipped[0].status == "True"


def test_conditions_are_kept_in_a_stable_order() -> None:
    conditions = []
    for type_ in ("MetricsAvailable", "Degraded", "Ready", "Progressing"):
        conditions = set_condition(conditions, type_, None, "X", "", T0, 1)
    assert [c.type for c in conditions] == ["Ready", "Progressing", "Degraded", "MetricsAvailable"]
    assert conditions[0].status == "Unknown"


def test_state_conditions() -> None:
    passed = RolloutStatus(state=State.PASSED, reason="ObservationPassed", message="m")
    assert state_conditions(passed, at_target=True)["Ready"] == (True, "TargetReached", "m")
    assert state_conditions(passed, at_target=False)["Ready"][0] is False
    halted = RolloutStatus(state=State.HALTED, reason="PreflightFailed", message="why")
    values = state_conditions(halted, at_target=False)
    assert values["Degraded"] == (True, "PreflightFailed", "why")
    assert values["Progressing"] == (False, "PreflightFailed", "why")
    observing = RolloutStatus(state=State.OBSERVING, reason="PostRestartChecksPassed")
    assert state_conditions(observing, at_target=False)["Progressing"][0] is True


def test_history_is_bounded_newest_last() -> None:
    history: list[HistoryEntry] = []
    for i in range(HISTORY_LIMIT + 25):
        history = append_history(history, HistoryEntry(at=T0 + timedelta(seconds=i), phase="Shadow", step="Shadow",
                                                       action=f"A{i}", reason="R"))
    assert len(history) == HISTORY_LIMIT == 100
    assert history[0].action == "A25" and history[-1].action == f"A{HISTORY_LIMIT + 24}"


def test_merge_patch_nulls_what_vanished() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
    new = {"a": 1, "b": {"c": 2}, "e": [1, 2], "f": "x"}
    assert merge_patch(old, new) == {"b": {"d": None}, "e": [1, 2], "f": "x"}


def test_status_patch_clears_observation_window() -> None:
    old = RolloutStatus(phase=Phase.CANARY, state=State.OBSERVING, observation_started_at=T0,
                        observation_ends_at=T0 + timedelta(hours=1))
    new = old.model_copy(update={"state": State.RESTARTING, "observation_started_at": None, "observation_ends_at": None})
    assert status_patch(old, new) == {"state": "Restarting", "observationStartedAt": None, "observationEndsAt": None}
    assert status_patch(None, new) == new.to_patch_body()
