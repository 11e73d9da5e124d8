"""decide(): the gate table end to end, rollbacks, escalation, requests, suspend, missing data."""

from __future__ import annotations

from datetime import timedelta
from typing import Callable

import pytest
from domain_builders import Driver, make_spec

from fillprob_operator.api import Phase, Playbook, State
from fillprob_operator.domain.actions import ClearRollbackAnnotation, PatchEnv
from fillprob_operator.domain.decide import Decision
from fillprob_operator.domain.ladder import AUTO_THRESHOLD, ENFORCE, ENFORCE_SYMBOLS
from fillprob_operator.domain.observations import RollbackRequest

CANARY = "SYM1,SYM2"
E1 = "SYM1,SYM2,SYM3,SYM4"
E2 = "SYM1,SYM2,SYM3,SYM4,SYM5,SYM6"
FAILED = "FILL_PROB_THRESHOLD_RESOLUTION_FAILED reason_code=eval_report_missing detail=gone"
SKIPPED = "THRESHOLD_RESOLVE_SKIPPED reason=model_dir_unset"


def patches(decision: Decision) -> list[PatchEnv]:
    return [a for a in decision.actions if isinstance(a, PatchEnv)]


def assert_idempotent(d: Driver) -> None:
    again = d.again()
    assert again.actions == () and again.changed is False


# --------------------------------------------------------------------------- the table, end to end

# How each row of API.md's table is provoked: (during the window | at the restart).
def cb_trip(d: Driver) -> Decision:
    d.world.set_fault(cb_trips=1, cb_lines=("FILL_PROB_CIRCUIT_BREAKER_TRIPPED block_count=48 rate_pct=96 symbol=SYM1",))
    return d.tick(timedelta(minutes=1))


def all_blocked(d: Driver) -> Decision:
    d.world.set_fault(block_all=("SYM1",))
    return d.tick(timedelta(minutes=1))


def blocks_outside(d: Driver) -> Decision:
    d.world.set_fault(blocks_outside={"SYM8": 3.0})
    return d.tick(timedelta(minutes=1))


def threshold_moves(d: Driver) -> Decision:
    d.world.set_fault(gauge_shift_bps=400)
    return d.tick(timedelta(minutes=1))


def resolution_failed(d: Driver) -> Decision:
    d.world.set_fault(resolution_line=FAILED)
    return d.complete_restart()


def resolution_skipped(d: Driver) -> Decision:
    d.world.set_fault(resolution_line=SKIPPED)
    return d.complete_restart()


def wrong_gauges(d: Driver) -> Decision:
    d.world.set_fault(enforce_gauge=0.5)
    return d.complete_restart()


def restart_times_out(d: Driver) -> Decision:
    d.tick(timedelta(minutes=9))
    assert d.status.state is State.RESTARTING
    return d.tick(timedelta(minutes=2))


AT_RESTART = {resolution_failed, resolution_skipped, wrong_gauges, restart_times_out}
STEPS = ["Shadow", "Canary", "Expand 1/2", "Expand 2/2", "Full", "AutoThreshold"]
HALT, N_A = "Halt", "n/a"
R1 = {ENFORCE: "0"}
R3 = {AUTO_THRESHOLD: "0"}


def R2(symbols: str) -> dict:
    return {ENFORCE: "1", ENFORCE_SYMBOLS: symbols}


# API.md's table with what each answer means for this spec (safeSymbols [SYM1]).
TABLE: list[tuple[Callable, str, list]] = [
    (cb_trip, "CircuitBreakerTripped", [HALT, R1, R2(CANARY), R2(E1), R2(E2), R3]),
    (all_blocked, "AllOrdersBlocked", [N_A, R2("SYM1"), R2(CANARY), R2(E1), R2(E2), R3]),
    (blocks_outside, "BlocksOutsideAllowlist", [HALT, R1, R1, R1, N_A, N_A]),
    (resolution_failed, "ThresholdResolutionFailed", [HALT, R1, R1, R1, R1, R3]),
    (resolution_skipped, "ModelDirUnset", [HALT, R1, R1, R1, R1, R3]),
    (wrong_gauges, "ThresholdResolutionFailed", [HALT, R1, R1, R1, R1, R3]),
    (threshold_moves, "RecommendedThresholdJumped", [HALT, HALT, HALT, HALT, HALT, None]),
    (threshold_moves, "UnexpectedThreshold", [None, None, None, None, None, R3]),
    (restart_times_out, "RestartTimedOut", [HALT, R1, R1, R1, R1, R3]),
]
CASES = [
    pytest.param(provoke, reason, step, answer, id=f"{reason}-{step}")
    for provoke, reason, answers in TABLE
    for step, answer in zip(STEPS, answers)
    if answer is not None
]


@pytest.mark.parametrize("provoke, reason, step, answer", CASES)
def test_gate_table(provoke: Callable, reason: str, step: str, answer) -> None:
    d = Driver(make_spec())
    if provoke in AT_RESTART:
        d.walk_to_restart(step)
    else:
        d.walk_to(step)
    decision = provoke(d)
    if answer == N_A:
        assert d.status.state is State.OBSERVING and patches(decision) == []
        return
    if answer == HALT:
        assert d.status.state is State.HALTED, d.status.message
        assert d.status.reason == reason
        assert patches(decision) == []
        assert decision.actions[-1].type == "Warning"
        d.tick(timedelta(days=2))
        assert d.status.state is State.HALTED and d.last.actions == ()
        return
    assert d.status.state is State.ROLLED_BACK, d.status.message
    assert d.status.last_rollback.reason == reason
    (patch,) = patches(decision)
    assert dict(patch.set_env) == answer and patch.remove_env == ()
    assert d.status.history[-1].action == f"Rollback{d.status.last_rollback.playbook.value}"
    assert_idempotent(d)


def test_rollback_evidence_names_the_values_that_decided() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    pods = [p.pod for p in d.world.pods]
    cb_trip(d)
    evidence = d.status.last_rollback.evidence
    assert evidence["cbTrips"] == {pod: 1 for pod in pods}
    assert any("FILL_PROB_CIRCUIT_BREAKER_TRIPPED" in line for line in evidence["logLines"])
    assert evidence["playbook"] == "R1" and evidence["signals"] == ["CircuitBreakerTripped"]
    assert d.status.history[-1].evidence["cbTrips"] == evidence["cbTrips"]


def test_passed_step_is_still_guarded() -> None:
    d = Driver(make_spec(targetPhase="Canary"))
    d.walk_to("Canary")
    d.pass_window()
    assert d.status.state is State.PASSED
    d.tick(timedelta(days=5))
    cb_trip(d)
    assert d.status.state is State.ROLLED_BACK and d.status.last_rollback.playbook is Playbook.R1


def test_r2_from_a_passed_expand_batch_goes_to_the_batch_below() -> None:
    d = Driver(make_spec(targetPhase="Expand"))
    d.walk_to("Expand 2/2")
    d.pass_window()
    assert d.status.last_known_good_symbols == E2.split(",")
    decision = cb_trip(d)
    assert patches(decision)[0].set_env[ENFORCE_SYMBOLS] == E1
    assert d.status.last_known_good_symbols == E1.split(",")
    assert (d.status.phase, d.status.batch, d.status.step) == (Phase.EXPAND, 1, "Expand 1/2 (R2)")


def test_r2_without_known_good_or_safe_symbols_falls_to_r1() -> None:
    d = Driver(make_spec(safeSymbols=[]))
    d.walk_to("Canary")
    decision = all_blocked(d)
    assert dict(patches(decision)[0].set_env) == {ENFORCE: "0"}
    assert d.status.last_rollback.playbook is Playbook.R1
    assert d.status.last_rollback.evidence["requested"] == "R2"


# --------------------------------------------------------------------------- after a rollback


def test_rollback_restarts_and_verifies_its_pods_then_guards() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    cb_trip(d)
    assert d.status.restart.verified is False
    d.complete_restart()
    assert d.status.state is State.ROLLED_BACK and d.status.restart.verified is True
    assert d.status.history[-1].action == "RollbackVerified"
    assert d.status.phase is Phase.SHADOW and d.status.step == "Shadow (R1)"
    assert d.status.enforced_symbols == [] and d.status.enforced_symbol_count == 0
    assert d.status.condition("Degraded").status == "True"
    assert d.status.condition("Degraded").reason == "CircuitBreakerTripped"


def test_rolled_back_never_climbs_on_its_own() -> None:
    d = Driver(make_spec())
    d.walk_to("Expand 1/2")
    cb_trip(d)
    d.complete_restart()
    for _ in range(5):
        d.tick(timedelta(days=2))
        assert d.status.state is State.ROLLED_BACK and d.last.actions == ()


def test_escalation_r3_r2_r1_then_halt() -> None:
    d = Driver(make_spec())
    d.walk_to("AutoThreshold")
    applied = []
    for _ in range(3):
        decision = cb_trip(d)
        applied.append((d.status.last_rollback.playbook.value, dict(patches(decision)[0].set_env)))
        d.complete_restart()
        assert d.status.restart.verified
    assert applied == [("R3", R3), ("R2", R2(E2)), ("R1", R1)]
    assert d.status.phase is Phase.SHADOW
    decision = blocks_outside(d)
    assert d.status.state is State.HALTED and patches(decision) == []


def test_a_failed_rollback_restart_escalates() -> None:
    d = Driver(make_spec())
    d.walk_to("AutoThreshold")
    cb_trip(d)  # R3
    d.world.set_fault(resolution_line=FAILED)
    d.complete_restart()
    # Full's row says R1 for a failed resolution, escalation from R3 says R2: the more severe wins.
    assert d.status.last_rollback.playbook is Playbook.R1
    assert d.status.last_rollback.reason == "ThresholdResolutionFailed"


def test_recorded_rollback_is_not_reapplied() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    cb_trip(d)
    token = d.status.restart.token
    assert d.world.token == token
    # Until the new pods roll out, the old pods (with the trip) are not judged again.
    d.world.rollout_complete = False
    assert d.again().actions == ()
    assert d.tick(timedelta(minutes=1)).actions == () and d.status.restart.token == token


def test_new_generation_rearms_a_rolled_back_rollout() -> None:
    d = Driver(make_spec())
    d.walk_to("Expand 2/2")
    cb_trip(d)  # R2 back to batch 1's set
    d.complete_restart()
    d.change_spec(riskAppetite="Conservative")
    decision = d.tick()
    assert d.status.state is State.RESTARTING and d.status.step == "Expand 1/2"
    assert patches(decision)[0].set_env[ENFORCE_SYMBOLS] == E1
    assert d.status.history[-1].reason == "Rearmed"
    assert d.status.condition("Degraded").status == "False"


def test_halted_changes_nothing_until_a_spec_change() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    threshold_moves(d)
    assert d.status.state is State.HALTED
    d.tick(timedelta(minutes=1))
    assert d.status.state is State.HALTED and d.last.actions == ()
    d.change_spec(targetPhase="Full")
    d.tick()
    assert d.status.state is State.RESTARTING and d.status.step == "Canary"


def test_halted_with_enforcement_on_still_answers_a_cb_trip_with_r1() -> None:
    """API.md, Everyday change: in Halted the only action allowed is a narrowing."""
    d = Driver(make_spec())
    d.walk_to("Canary")
    threshold_moves(d)
    assert d.status.state is State.HALTED
    decision = cb_trip(d)
    (patch,) = patches(decision)
    assert dict(patch.set_env) == {"GRINDER_FILL_MODEL_ENFORCE": "0"}
    assert d.status.state is State.ROLLED_BACK and d.status.last_rollback.playbook.value == "R1"


# --------------------------------------------------------------------------- manual and alert rollbacks


def request(playbook: str, key: str, reason: str = "ManualRollback") -> RollbackRequest:
    return RollbackRequest(playbook=playbook, reason=reason, source=f"annotation by alice ({playbook})", key=key)


def test_annotation_applies_playbook_and_is_cleared() -> None:
    d = Driver(make_spec())
    d.walk_to("Expand 1/2")
    d.world.requests = (request("R2", "uid-1/rv-77"),)
    decision = d.tick()
    assert any(isinstance(a, ClearRollbackAnnotation) for a in decision.actions)
    assert patches(decision)[0].set_env[ENFORCE_SYMBOLS] == CANARY
    assert d.status.state is State.ROLLED_BACK and d.status.last_rollback.reason == "ManualRollback"
    assert d.status.history[-1].evidence["requestKey"] == "uid-1/rv-77"
    assert "alice" in d.status.history[-1].evidence["source"]
    assert d.world.requests == ()
    assert_idempotent(d)


def test_request_already_in_history_is_not_applied_twice() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    d.world.requests = (request("R1", "k1"),)
    d.tick()
    seq = d.status.restart.seq
    d.world.requests = (request("R1", "k1"),)  # the annotation removal was lost
    decision = d.tick()
    assert patches(decision) == [] and d.status.restart.seq == seq
    assert [type(a) for a in decision.actions] == [ClearRollbackAnnotation]


def test_alert_without_playbook_uses_the_tables_cb_answer() -> None:
    d = Driver(make_spec())
    d.walk_to("Full")
    d.world.requests = (request("", "alert-fp-1", reason="AlertFired"),)
    decision = d.tick()
    assert patches(decision)[0].set_env == {ENFORCE: "1", ENFORCE_SYMBOLS: E2}
    assert d.status.last_rollback.reason == "AlertFired"
    assert not any(isinstance(a, ClearRollbackAnnotation) for a in decision.actions)
    d.world.requests = (request("", "alert-fp-1", reason="AlertFired"),)  # duplicate delivery
    assert d.tick().actions == ()


def test_invalid_annotation_is_rejected_and_cleared() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    d.world.requests = (request("R9", "k9"),)
    decision = d.tick()
    assert patches(decision) == [] and d.status.state is State.OBSERVING
    assert d.status.history[-1].action == "RollbackRejected"
    assert any(isinstance(a, ClearRollbackAnnotation) for a in decision.actions)


def test_rollback_before_anything_was_applied_is_skipped() -> None:
    d = Driver(make_spec())
    d.tick()
    d.world.requests = (request("R1", "early"),)
    decision = d.tick()
    assert patches(decision) == [] and d.status.state is State.PREFLIGHT
    assert d.status.history[-1].action == "RollbackSkipped"


def test_manual_rollback_while_halted_is_applied() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    threshold_moves(d)
    d.world.requests = (request("R1", "k-halt"),)
    decision = d.tick()
    assert dict(patches(decision)[0].set_env) == R1 and d.status.state is State.ROLLED_BACK


# --------------------------------------------------------------------------- suspend


def test_suspend_changes_nothing_but_keeps_reporting() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    d.change_spec(suspend=True)
    d.tick()
    assert d.status.state is State.SUSPENDED and d.status.resume_state is State.OBSERVING
    d.world.requests = (request("R1", "k-s"),)
    cb_trip(d)
    assert patches(d.last) == [] and d.status.state is State.SUSPENDED
    d.world.metrics_available = False
    decision = d.tick(timedelta(minutes=1))
    assert d.status.condition("MetricsAvailable").status == "False"  # still reporting
    assert patches(decision) == [] and d.world.cleared_annotations == 0
    d.world.metrics_available = True
    d.change_spec(suspend=False)
    decision = d.tick(timedelta(minutes=1))
    assert d.status.state is State.ROLLED_BACK  # resumed, then the trip and the request were seen


def test_suspend_then_resume_continues_the_window_without_the_suspended_time() -> None:
    """API.md, Everyday change: time while Suspended does not count."""
    d = Driver(make_spec())
    d.walk_to("Shadow")
    ends = d.status.observation_ends_at
    d.change_spec(suspend=True)
    d.tick(timedelta(hours=1))
    d.tick(ends - d.now + timedelta(hours=1))
    assert d.status.state is State.SUSPENDED and d.status.step == "Shadow"
    suspended_for = d.now - d.status.suspended_at
    d.change_spec(suspend=False)
    d.tick()
    assert d.status.state is State.OBSERVING and d.status.observation_ends_at == ends + suspended_for
    d.tick(d.status.observation_ends_at - d.now)
    d.tick(d.spec.prometheus.interval)
    assert d.status.step == "Canary" and d.status.state is State.RESTARTING


def test_resume_after_a_rollback_stays_rolled_back() -> None:
    """Toggling suspend is not a spec change for re-arming."""
    d = Driver(make_spec())
    d.walk_to("Canary")
    cb_trip(d)
    assert d.status.state is State.ROLLED_BACK
    d.change_spec(suspend=True)
    d.tick(timedelta(minutes=1))
    d.change_spec(suspend=False)
    decision = d.tick(timedelta(minutes=1))
    assert d.status.state is State.ROLLED_BACK and patches(decision) == []


def test_no_go_seen_while_suspended_is_reported_at_once() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    d.change_spec(suspend=True)
    d.tick()
    decision = cb_trip(d)
    degraded = d.status.condition("Degraded")
    assert (degraded.status, degraded.reason) == ("True", "CircuitBreakerTripped")
    assert [e.reason for e in decision.actions if getattr(e, "type", "") == "Warning"] == ["CircuitBreakerTripped"]
    assert patches(decision) == [] and d.status.state is State.SUSPENDED
    again = d.tick(timedelta(seconds=30))
    assert [a for a in again.actions if getattr(a, "reason", "") == "CircuitBreakerTripped"] == []


# --------------------------------------------------------------------------- missing data


def test_window_pauses_while_metrics_are_missing_and_is_extended() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    started, ends = d.status.observation_started_at, d.status.observation_ends_at
    d.tick(timedelta(minutes=20))
    d.world.metrics_available = False
    d.tick(timedelta(minutes=1))
    cond = d.status.condition("MetricsAvailable")
    assert (cond.status, cond.reason) == ("False", "MetricsUnavailable")
    assert d.status.condition("Progressing").status == "True"
    # The window would have ended; it never promotes (nor rolls back) on missing data.
    d.tick(ends - d.now + timedelta(minutes=30))
    assert d.status.state is State.OBSERVING and d.status.step == "Canary"
    assert_idempotent(d)
    outage_began = cond.last_transition_time
    d.world.metrics_available = True
    d.tick(timedelta(minutes=5))
    outage = d.now - outage_began
    assert d.status.observation_ends_at == ends + outage
    assert d.status.observation_started_at == started
    assert d.status.condition("MetricsAvailable").status == "True"
    assert "window extended by" in d.status.condition("MetricsAvailable").message
    assert d.status.history[-1].action == "MetricsAvailable"
    assert d.status.state is State.OBSERVING
    d.tick(d.status.observation_ends_at - d.now)
    d.tick(d.spec.prometheus.interval)
    assert d.status.step == "Expand 1/2"


def test_partial_series_count_as_missing() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    d.world.pods = d.world.pods + (d.world.pods[0].__class__("grinder-late", False, None),)
    d.tick(d.status.observation_ends_at - d.now)
    assert d.status.state is State.OBSERVING  # one pod not scraped: hold
    assert "grinder-late" in d.status.condition("MetricsAvailable").message


def test_history_stays_bounded_through_many_outages() -> None:
    d = Driver(make_spec())
    d.walk_to("Shadow")
    for _ in range(60):
        d.world.metrics_available = False
        d.tick(timedelta(seconds=30))
        d.world.metrics_available = True
        d.tick(timedelta(seconds=30))
    assert len(d.status.history) == 100
    assert [h.action for h in d.status.history[-2:]] == ["MetricsUnavailable", "MetricsAvailable"]
    assert all(a.at <= b.at for a, b in zip(d.status.history, d.status.history[1:]))  # newest last
    assert d.status.history[0].action != "PreflightStarted"  # the oldest fell off


def test_alert_in_shadow_halts_as_the_table_says() -> None:
    d = Driver(make_spec())
    d.walk_to("Shadow")
    d.world.requests = (request("", "alert-1", reason="AlertFired"),)
    decision = d.tick()
    assert d.status.state is State.HALTED and d.status.reason == "AlertFired"
    assert patches(decision) == []


def test_lower_target_while_rolled_back_rearms_at_the_lower_step() -> None:
    d = Driver(make_spec())
    d.walk_to("Full")
    cb_trip(d)  # R2 to batch 2's set
    d.complete_restart()
    d.change_spec(targetPhase="Canary")
    decision = d.tick()
    assert d.status.step == "Canary" and d.status.state is State.RESTARTING
    assert patches(decision)[0].set_env[ENFORCE_SYMBOLS] == CANARY


def test_r3_from_auto_threshold_reads_as_full() -> None:
    d = Driver(make_spec())
    d.walk_to("AutoThreshold")
    cb_trip(d)
    assert (d.status.phase, d.status.step) == (Phase.FULL, "Full (R3)")
    d.complete_restart()
    assert d.status.restart.verified and d.status.threshold.mode == "recommend_only"


def test_alert_rollbacks_narrow_or_do_nothing_whatever_their_starts_at() -> None:
    """API.md, Everyday change: a requested playbook that narrows is applied, whatever the
    alert's startsAt; one that would not narrow is RollbackSkipped; each key at most once."""
    d = Driver(make_spec())
    d.walk_to("AutoThreshold")
    d.world.requests = (request("R3", "gate-stand-in"),)
    d.tick()
    rolled_back_at = d.status.last_rollback.at
    earlier = RollbackRequest(playbook="R1", reason="AlertFired", source="alert CB", key="alert:fp:1",
                              evidence={"startsAt": (rolled_back_at - timedelta(seconds=3)).isoformat()})
    d.world.requests = (earlier,)
    decision = d.tick(timedelta(seconds=5))
    (patch,) = patches(decision)
    assert dict(patch.set_env) == {"GRINDER_FILL_MODEL_ENFORCE": "0"} and d.status.last_rollback.playbook.value == "R1"
    d.world.roll_out()
    decision = d.tick(timedelta(seconds=5))  # the same alert again: nothing
    assert patches(decision) == [] and d.status.last_rollback.playbook.value == "R1"
    not_narrower = RollbackRequest(playbook="R3", reason="AlertFired", source="alert R3", key="alert:fp:2")
    d.world.requests = (not_narrower,)
    decision = d.tick(timedelta(seconds=5))
    assert patches(decision) == [] and d.status.history[-1].action == "RollbackSkipped"
    assert d.status.history[-1].reason == "RollbackSkipped" and "would not narrow" in d.status.history[-1].evidence["why"]


def test_an_alert_and_the_trip_it_reports_in_one_tick_roll_back_once() -> None:
    """Found by CI (e2e): the webhook woke the rollout while the CB line was already in the log.
    Someone asked first (the alert: R1 at Canary), then the gates find the new restart's pods
    not there yet; nothing halts a rollout that was just rolled back."""
    d = Driver(make_spec())
    d.walk_to("Canary")
    d.world.requests = (RollbackRequest(playbook="", reason="AlertFired", source="alert CB", key="alert:fp:9"),)
    decision = cb_trip(d)
    (patch,) = patches(decision)
    assert dict(patch.set_env) == {"GRINDER_FILL_MODEL_ENFORCE": "0"}
    assert d.status.state is State.ROLLED_BACK
    assert (d.status.last_rollback.playbook.value, d.status.last_rollback.reason) == ("R1", "AlertFired")


def test_an_unlabelled_alert_whose_table_says_halt_leaves_a_rolled_back_rollout_alone() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    cb_trip(d)
    assert d.status.state is State.ROLLED_BACK and d.status.phase.value == "Shadow"
    d.world.requests = (RollbackRequest(playbook="", reason="AlertFired", source="alert CB", key="alert:fp:10"),)
    decision = d.tick(timedelta(seconds=30))
    assert patches(decision) == [] and d.status.state is State.ROLLED_BACK
    assert d.status.history[-1].action == "RollbackSkipped"
