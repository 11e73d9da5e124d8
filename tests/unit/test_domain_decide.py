"""decide(): Phase 0, preflight, walking the ladder, idempotency and crash safety."""

from __future__ import annotations

from datetime import timedelta

import pytest
from domain_builders import NAME, NAMESPACE, T0, Driver, World, make_spec

from fillprob_operator.api import Phase, State, status_from_dict
from fillprob_operator.domain.actions import EmitEvent, PatchEnv, RunPreflight
from fillprob_operator.domain.decide import Decision, decide, preflight_job_name
from fillprob_operator.domain.ladder import (
    ARTIFACT_DIR,
    AUTO_THRESHOLD,
    ENFORCE,
    ENFORCE_SYMBOLS,
    EVAL_DIR,
    MIN_BPS,
    MODEL_DIR,
)
from fillprob_operator.domain.observations import (
    DeploymentObservation,
    MetricsObservation,
    Observations,
    RollbackRequest,
)


def kinds(decision: Decision) -> list[type]:
    return [type(a) for a in decision.actions]


def patches(decision: Decision) -> list[PatchEnv]:
    return [a for a in decision.actions if isinstance(a, PatchEnv)]


def assert_idempotent(d: Driver) -> None:
    again = d.again()
    assert again.actions == ()
    assert again.changed is False
    assert again.status is d.status


# --------------------------------------------------------------------------- Phase 0


@pytest.mark.parametrize("unset", [MODEL_DIR, EVAL_DIR, ARTIFACT_DIR])
def test_dirs_unset_halts_model_dir_unset(unset: str) -> None:
    d = Driver(make_spec())
    d.world.env.pop(unset)
    decision = d.tick()
    assert d.status.state is State.HALTED and d.status.reason == "ModelDirUnset"
    assert unset in d.status.message
    assert kinds(decision) == [EmitEvent] and decision.actions[0].type == "Warning"
    assert_idempotent(d)


def test_value_from_counts_as_set() -> None:
    d = Driver(make_spec())
    d.world.env[MODEL_DIR] = None  # valueFrom: set, value unknown here
    d.tick()
    assert d.status.state is State.PREFLIGHT


@pytest.mark.parametrize(
    "env_change, mentions",
    [
        ({ENFORCE: "1"}, ENFORCE),
        ({AUTO_THRESHOLD: "1"}, AUTO_THRESHOLD),
        ({ENFORCE_SYMBOLS: "SYM1"}, ENFORCE_SYMBOLS),
        ({ENFORCE_SYMBOLS: ""}, ENFORCE_SYMBOLS),
        ({MIN_BPS: None}, MIN_BPS),
    ],
)
def test_first_takeover_outside_the_starting_state_halts_and_changes_nothing(env_change: dict, mentions: str) -> None:
    d = Driver(make_spec())
    for key, value in env_change.items():
        if value is None:
            d.world.env.pop(key)
        else:
            d.world.env[key] = value
    decision = d.tick()
    assert d.status.state is State.HALTED and d.status.reason == "StartingStateInvalid"
    assert mentions in d.status.message
    assert not any(isinstance(a, (PatchEnv, RunPreflight)) for a in decision.actions)
    assert d.world.patches == []
    # Halted changes nothing further, however long we wait.
    assert d.tick(timedelta(days=3)).actions == ()


def test_starting_state_accepts_zero_values_and_spec_min_bps() -> None:
    d = Driver(make_spec(minBps=2600))
    d.world.env.update({ENFORCE: "0", AUTO_THRESHOLD: "0"})
    d.world.env.pop(MIN_BPS)
    d.tick()
    assert d.status.state is State.PREFLIGHT


def test_halted_starting_state_rearms_on_a_spec_change() -> None:
    d = Driver(make_spec())
    d.world.env[ENFORCE] = "1"
    d.tick()
    assert d.status.state is State.HALTED
    d.world.env[ENFORCE] = "0"
    d.change_spec(minBps=2500)
    d.tick()
    assert d.status.state is State.PREFLIGHT
    assert [h.action for h in d.status.history][-2:] == ["Rearmed", "PreflightStarted"]


def test_missing_deployment_holds_and_says_so() -> None:
    spec = make_spec()
    obs = Observations(DeploymentObservation(exists=False), MetricsObservation(available=False))
    decision = decide(spec, None, obs, T0, generation=1, name=NAME, namespace=NAMESPACE)
    assert decision.status.state is State.PENDING
    ready = decision.status.condition("Ready")
    assert (ready.status, ready.reason) == ("False", "DeploymentMissing")
    assert [type(a) for a in decision.actions] == [EmitEvent]
    again = decide(spec, decision.status, obs, T0 + timedelta(minutes=5), generation=1, name=NAME, namespace=NAMESPACE)
    assert again.actions == () and again.changed is False


def test_unknown_container_holds_with_a_fix() -> None:
    d = Driver(make_spec(containerName="sidecar"))
    d.tick()
    ready = d.status.condition("Ready")
    assert ready.reason == "ContainerNotFound" and "spec.containerName" in ready.message
    assert d.world.jobs_started == []


# --------------------------------------------------------------------------- preflight


def test_preflight_job_runs_in_the_managed_container() -> None:
    d = Driver(make_spec(preflight={"timeout": "2m"}))
    decision = d.tick()
    (run,) = [a for a in decision.actions if isinstance(a, RunPreflight)]
    assert run == RunPreflight("grinder-preflight-1", "grinder", tuple(make_spec().preflight.command), 120)
    assert d.status.state is State.PREFLIGHT and d.status.phase is Phase.PREFLIGHT
    assert d.status.preflight.job_name == "grinder-preflight-1"
    assert_idempotent(d)  # the Job exists now: not created twice


def test_preflight_run_re_issued_while_the_job_is_absent() -> None:
    d = Driver(make_spec())
    d.tick()
    d.world.job = None  # the create never happened (crash after the status write)
    assert [type(a) for a in d.tick().actions] == [RunPreflight]


def test_preflight_output_is_parsed_into_threshold_then_shadow_restarts() -> None:
    d = Driver(make_spec())
    d.tick()
    d.world.finish_preflight()
    decision = d.tick()
    assert d.status.threshold.model_dump() == {"configured_bps": 2500, "recommended_bps": 3000,
                                               "effective_bps": 3000, "mode": "auto_apply"}
    assert d.status.state is State.RESTARTING and d.status.phase is Phase.SHADOW
    (patch,) = patches(decision)
    assert patch == PatchEnv("grinder", {ENFORCE: "0", AUTO_THRESHOLD: "0"}, (ENFORCE_SYMBOLS,), "1-1")


def test_preflight_failure_halts() -> None:
    d = Driver(make_spec())
    d.tick()
    d.world.finish_preflight(ok=False)
    d.tick()
    assert d.status.state is State.HALTED and d.status.reason == "PreflightFailed"
    assert "eval_report.json does not exist" in d.status.message
    assert d.status.history[-1].evidence["exitCode"] == 1
    assert d.world.patches == []


def test_preflight_that_never_finishes_halts_after_its_timeout() -> None:
    d = Driver(make_spec(preflight={"timeout": "5m"}))
    d.tick()
    d.tick(timedelta(minutes=5))
    assert d.status.state is State.PREFLIGHT
    d.tick(timedelta(minutes=2))
    assert d.status.state is State.HALTED and d.status.reason == "PreflightFailed"


def test_preflight_disabled_goes_straight_to_shadow() -> None:
    d = Driver(make_spec(preflight={"enabled": False}))
    decision = d.tick()
    assert d.status.state is State.RESTARTING and d.status.phase is Phase.SHADOW
    assert not any(isinstance(a, RunPreflight) for a in decision.actions)


def test_preflight_job_name_fits_63_characters() -> None:
    name = preflight_job_name("a" * 80, 12)
    assert len(name) <= 63 and name.endswith("-preflight-12")


# --------------------------------------------------------------------------- the walk


def test_walks_the_whole_ladder_step_by_step() -> None:
    d = Driver(make_spec())
    d.walk_to("AutoThreshold")
    d.pass_window()
    assert d.status.state is State.PASSED and d.status.phase is Phase.AUTO_THRESHOLD
    steps = [h.step for h in d.status.history if h.action == "StepPassed"]
    assert steps == ["Shadow", "Canary", "Expand 1/2", "Expand 2/2", "Full", "AutoThreshold"]
    assert [p.set_env.get(ENFORCE_SYMBOLS) for p in d.world.patches] == [
        None, "SYM1,SYM2", "SYM1,SYM2,SYM3,SYM4", "SYM1,SYM2,SYM3,SYM4,SYM5,SYM6", "", ""]
    assert [p.restart_token for p in d.world.patches] == ["1-1", "1-2", "1-3", "1-4", "1-5", "1-6"]
    assert d.status.last_known_good_symbols == ["SYM1", "SYM2", "SYM3", "SYM4", "SYM5", "SYM6"]
    assert d.status.threshold.mode == "auto_apply"
    ready = d.status.condition("Ready")
    assert (ready.status, ready.reason) == ("True", "TargetReached")
    assert_idempotent(d)


@pytest.mark.parametrize(
    "target, final_step",
    [("Shadow", "Shadow"), ("Canary", "Canary"), ("Expand", "Expand 2/2"), ("Full", "Full")],
)
def test_stops_at_target_phase(target: str, final_step: str) -> None:
    d = Driver(make_spec(targetPhase=target))
    d.walk_to(final_step)
    d.pass_window()
    assert (d.status.state, d.status.step) == (State.PASSED, final_step)
    d.tick(timedelta(days=10))
    assert (d.status.state, d.status.step) == (State.PASSED, final_step)


def test_min_bps_is_set_with_every_step() -> None:
    d = Driver(make_spec(minBps=2600, targetPhase="Canary"))
    d.walk_to("Canary")
    assert [p.set_env[MIN_BPS] for p in d.world.patches] == ["2600", "2600"]


def test_each_step_waits_for_its_whole_window() -> None:
    d = Driver(make_spec())
    d.walk_to("Shadow")
    ends = d.status.observation_ends_at
    assert ends - d.status.observation_started_at == timedelta(hours=24)
    d.tick(ends - d.now - timedelta(seconds=1))
    assert d.status.state is State.OBSERVING and d.status.step == "Shadow"
    d.tick(timedelta(seconds=1))
    assert d.status.step == "Shadow" and d.status.state is State.PASSED  # seen for one interval
    d.tick(d.spec.prometheus.interval - timedelta(seconds=1))
    assert d.status.step == "Shadow" and d.status.state is State.PASSED
    d.tick(timedelta(seconds=1))
    assert d.status.step == "Canary" and d.status.state is State.RESTARTING


def test_step_labels_and_symbol_counts() -> None:
    d = Driver(make_spec())
    d.walk_to("Expand 2/2")
    assert d.status.phase is Phase.EXPAND and d.status.batch == 2
    assert d.status.enforced_symbols == ["SYM1", "SYM2", "SYM3", "SYM4", "SYM5", "SYM6"]
    assert d.status.enforced_symbol_count == 6
    d.walk_to("Full")
    assert d.status.enforced_symbol_count == 8  # no allowlist: every symbol the pods trade


def test_verifying_waits_for_ready_pods_and_resolution_lines() -> None:
    d = Driver(make_spec())
    d.walk_to_restart("Canary")
    d.world.roll_out()
    d.world.pods = tuple(p.__class__(p.pod, False, None) for p in d.world.pods)
    d.tick(timedelta(seconds=30))
    assert d.status.state is State.VERIFYING
    assert_idempotent(d)
    d.world.roll_out()
    d.tick(timedelta(seconds=30))
    assert d.status.state is State.OBSERVING


def test_verifying_holds_on_missing_metrics_without_failing() -> None:
    d = Driver(make_spec())
    d.walk_to_restart("Canary")
    d.world.metrics_available = False
    d.complete_restart()
    assert d.status.state is State.VERIFYING
    assert d.status.condition("MetricsAvailable").status == "False"
    d.tick(timedelta(hours=5))  # far past progressDeadline: missing data never fails a step
    assert d.status.state is State.VERIFYING
    d.world.metrics_available = True
    d.tick()
    assert d.status.state is State.OBSERVING


def test_lower_target_is_applied_at_once_without_gates() -> None:
    d = Driver(make_spec())
    d.walk_to("Expand 2/2")
    d.change_spec(targetPhase="Canary")
    decision = d.tick()
    (patch,) = patches(decision)
    assert patch.set_env[ENFORCE_SYMBOLS] == "SYM1,SYM2"
    assert d.status.step == "Canary" and d.status.state is State.RESTARTING
    assert d.status.history[-1].reason == "TargetLowered"


def test_higher_target_climbs_from_passed() -> None:
    d = Driver(make_spec(targetPhase="Canary"))
    d.walk_to("Canary")
    d.pass_window()
    assert d.status.state is State.PASSED
    d.change_spec(targetPhase="Full")
    d.tick(d.spec.prometheus.interval)
    assert d.status.step == "Expand 1/2" and d.status.state is State.RESTARTING


def test_spec_change_of_the_running_step_redoes_it() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    d.change_spec(minBps=2700)
    decision = d.tick()
    (patch,) = patches(decision)
    assert patch.set_env[MIN_BPS] == "2700" and d.status.step == "Canary"
    assert d.status.history[-1].reason == "StepChanged"


def test_unrelated_spec_change_keeps_the_window() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    ends = d.status.observation_ends_at
    d.change_spec(gates={"minOrders": 50})
    decision = d.tick()
    assert patches(decision) == [] and d.status.observation_ends_at == ends
    assert d.status.observed_generation == 2


def test_refuses_auto_threshold_when_recommended_is_far_from_configured() -> None:
    d = Driver(make_spec(gates={"maxAutoThresholdDeltaBps": 200}))  # recommended 3000 vs configured 2500
    d.walk_to("Full")
    d.pass_window()
    decision = d.tick(d.spec.prometheus.interval)
    assert d.status.state is State.PASSED and d.status.step == "Full"
    assert d.status.reason == "UnexpectedThreshold" and "maxAutoThresholdDeltaBps" in d.status.message
    assert patches(decision) == []
    assert d.status.condition("Ready").status == "False"
    assert_idempotent(d)
    d.change_spec(gates={"maxAutoThresholdDeltaBps": 600})
    d.tick()
    assert d.status.step == "AutoThreshold" and d.status.state is State.RESTARTING


def test_model_change_reruns_preflight_then_redoes_the_step() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    d.world.env[EVAL_DIR] = "/data/eval-v2"
    d.world.recommended_bps = 3300  # a new report: a new recommendation is not a jump
    d.world.roll_out()
    decision = d.tick()
    # the rerun runs in the background: the step stays, guarded, and does not climb meanwhile
    assert d.status.state is State.OBSERVING and d.status.phase is Phase.CANARY
    assert d.status.preflight.state == "Running"
    (run,) = [a for a in decision.actions if isinstance(a, RunPreflight)]
    assert run.job_name == "grinder-preflight-2"
    d.tick(timedelta(minutes=1))
    assert d.status.state is State.OBSERVING  # still watching, no jump on the new model
    d.world.finish_preflight()
    d.tick()
    assert d.status.state is State.RESTARTING and d.status.step == "Canary"
    assert d.status.threshold.recommended_bps == 3300
    d.complete_restart()
    assert d.status.state is State.OBSERVING


def test_a_rerun_that_fails_while_enforcing_applies_r1_then_halts() -> None:
    """API.md, Everyday change: a preflight that fails while enforcement is on applies R1."""
    d = Driver(make_spec())
    d.walk_to("Canary")
    d.world.env[EVAL_DIR] = "/data/eval-v2"
    d.world.roll_out()
    d.tick()
    d.world.finish_preflight(ok=False)
    decision = d.tick(timedelta(seconds=30))
    (patch,) = [a for a in decision.actions if isinstance(a, PatchEnv)]
    assert dict(patch.set_env) == {"GRINDER_FILL_MODEL_ENFORCE": "0"}
    assert d.status.state is State.HALTED and d.status.reason == "PreflightFailed"
    assert d.status.last_rollback.playbook.value == "R1"


def test_a_lower_target_during_a_rerun_is_applied_at_once() -> None:
    d = Driver(make_spec())
    d.walk_to("Full")
    d.world.env[EVAL_DIR] = "/data/eval-v2"
    d.world.roll_out()
    d.tick()
    assert d.status.preflight.state == "Running"
    d.change_spec(targetPhase="Canary")
    decision = d.tick()
    (patch,) = [a for a in decision.actions if isinstance(a, PatchEnv)]
    assert patch.set_env["GRINDER_FILL_PROB_ENFORCE_SYMBOLS"] == "SYM1,SYM2" and d.status.step == "Canary"


# --------------------------------------------------------------------------- crash safety


def test_every_tick_is_idempotent_along_the_walk() -> None:
    d = Driver(make_spec())
    d.tick()
    assert_idempotent(d)
    d.world.finish_preflight()
    for _ in range(12):
        d.tick()
        assert_idempotent(d)
        if d.status.state is State.RESTARTING:
            d.world.roll_out()
        d.tick(timedelta(minutes=30))
        assert_idempotent(d)
        if d.status.state is State.OBSERVING:
            d.tick(d.status.observation_ends_at - d.now)
            assert_idempotent(d)


def test_patch_not_reissued_when_the_deployment_has_the_token() -> None:
    d = Driver(make_spec())
    d.walk_to_restart("Canary")
    assert d.world.token == d.status.restart.token
    assert patches(d.again()) == []


def test_patch_reissued_when_the_deployment_never_got_it() -> None:
    d = Driver(make_spec())
    d.through_preflight()
    status = d.status  # written, but the PatchEnv was lost (crash before it ran)
    world = World()
    decision = decide(d.spec, status, world.observations(), d.now, generation=1, name=NAME, namespace=NAMESPACE)
    assert decision.changed is False
    assert patches(decision) == [PatchEnv("grinder", dict(status.restart.set_env), tuple(status.restart.remove_env),
                                          status.restart.token)]


def test_resumes_from_a_stored_status() -> None:
    d = Driver(make_spec())
    d.walk_to("Expand 1/2")
    stored = status_from_dict(d.status.to_patch_body())
    decision = decide(d.spec, stored, d.world.observations(), d.now, generation=1, name=NAME, namespace=NAMESPACE)
    assert decision.actions == () and decision.changed is False
    d.status = stored
    d.pass_window()
    d.tick(d.spec.prometheus.interval)
    assert d.status.step == "Expand 2/2"


def test_nothing_changed_keeps_timestamps() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    before = d.status.to_patch_body()
    decision = d.tick(timedelta(minutes=10))
    assert decision.changed is False and decision.status.to_patch_body() == before


def test_naive_now_is_utc_and_subsecond_is_dropped() -> None:
    d = Driver(make_spec())
    decision = decide(d.spec, None, d.world.observations(), T0.replace(tzinfo=None, microsecond=999),
                      generation=1, name=NAME, namespace=NAMESPACE)
    assert decision.status.history[0].at == T0


def test_every_transition_emits_an_event() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    reasons = [e.reason for e in d.world.events]
    assert reasons.count("StepStarted") == 2 and reasons.count("ObservationPassed") == 1
    assert len(d.world.events) == len(d.status.history)
    assert all(e.type == "Normal" for e in d.world.events)


def test_verifying_pods_that_never_become_ready_time_out() -> None:
    d = Driver(make_spec())
    d.walk_to_restart("Canary")
    d.world.roll_out()
    d.world.pods = tuple(p.__class__(p.pod, False, None) for p in d.world.pods)
    d.tick(timedelta(minutes=5))
    assert d.status.state is State.VERIFYING
    d.tick(timedelta(minutes=6))
    assert d.status.state is State.ROLLED_BACK and d.status.last_rollback.reason == "RestartTimedOut"
    assert "not done within progressDeadline 10m" in d.status.message


def test_a_rollback_before_the_step_patch_landed_carries_both() -> None:
    d = Driver(make_spec())
    d.walk_to_restart("Canary")
    status = d.status
    world = World()  # the Deployment still has the Shadow token: the Canary patch never ran
    world.token, world.env = "1-1", {**world.env, ENFORCE: "0", AUTO_THRESHOLD: "0"}
    world.requests = (RollbackRequest("R1", "ManualRollback", "alice", key="k"),)
    decision = decide(d.spec, status, world.observations(), d.now, generation=1, name=NAME, namespace=NAMESPACE)
    (patch,) = patches(decision)
    assert patch.set_env == {ENFORCE: "0", ENFORCE_SYMBOLS: "SYM1,SYM2", AUTO_THRESHOLD: "0"}
    assert patch.restart_token == "1-3"


def test_model_dir_removed_mid_ladder_is_a_resolution_no_go() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    d.world.env.pop(MODEL_DIR)
    decision = d.tick()
    assert d.status.state is State.ROLLED_BACK and d.status.last_rollback.reason == "ModelDirUnset"
    assert patches(decision)[0].set_env == {ENFORCE: "0"}


def test_lost_status_write_never_undoes_a_newer_patch() -> None:
    d = Driver(make_spec())
    d.walk_to("Canary")
    stale = d.status
    d.world.requests = (RollbackRequest("R1", "ManualRollback", "alice", key="k"),)
    d.tick()  # R1 applied (token 1-3) ...
    d.world.roll_out()
    d.world.requests = ()
    decision = decide(d.spec, stale, d.world.observations(), d.now, generation=1, name=NAME, namespace=NAMESPACE)
    assert patches(decision) == []  # ... and the stale status (token 1-2) must not re-apply Canary
    assert decision.status.condition("Ready").reason == "StatusBehindDeployment"
    d.change_spec(observation={"canary": "2h"})  # a spec change re-arms
    rearmed = decide(d.spec, stale, d.world.observations(), d.now, generation=2, name=NAME, namespace=NAMESPACE)
    (patch,) = patches(rearmed)
    assert patch.restart_token == "2-4" and rearmed.status.state is State.RESTARTING
