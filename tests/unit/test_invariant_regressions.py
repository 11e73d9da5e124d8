"""Counterexamples the state machine (test_invariants.py) found, as named example tests.

Each test is the shrunk sequence, replayed on the same simulated world (`Sim`), asserting what
API.md / notes/design.md require. Named after the promise it holds the domain to.
"""

from __future__ import annotations

from dataclasses import replace

from invariants import ENFORCE, scope_of
from test_invariants import MODEL_DIR, NAME, NAMESPACE, Sim, spec_body

from fillprob_operator.api import State
from fillprob_operator.domain.actions import PatchEnv, RunPreflight
from fillprob_operator.domain.decide import decide


def world(body: dict) -> Sim:
    sim = Sim(body)
    sim.check = False  # each test asserts its own promise
    return sim


def walk_until(sim: Sim, state: str, step: str | None = None, limit: int = 40) -> None:
    """The happy path (Job ends, rollouts end, windows elapse) until `state` at `step`."""
    if sim.status is None:
        sim.tick()
    for _ in range(limit):
        if sim.status.state.value == state and (step is None or sim.status.step == step):
            return
        sim.progress()
        sim.tick()
    raise AssertionError(f"did not reach {state} {step}: {sim.status.state.value} {sim.status.step}")


def decide_again(sim: Sim):
    return decide(sim.spec, sim.status, sim.observations(), sim.now, generation=sim.generation,
                  name=NAME, namespace=NAMESPACE)


# --------------------------------------------------------------------------- I8


def test_decide_again_after_preflight_passed_asks_for_nothing_when_the_model_changed_meanwhile() -> None:
    """I8: the model dir changed while the first preflight ran; the tick that reads the Job's
    success must already know (rerun, or start the step), not leave a RunPreflight for later."""
    sim = world(spec_body("Shadow"))
    sim.tick()  # Preflight, Job started
    sim.edit_env(MODEL_DIR, "/models/v2", "argocd-controller")
    sim.recommended_bps += 100
    sim.tick()
    sim.finish_job(ok=True)
    sim.tick()  # check_all asserts: decide again after the actions asks for no PatchEnv/RunPreflight
    again = decide_again(sim)
    assert not [a for a in again.actions if isinstance(a, (PatchEnv, RunPreflight))]


# --------------------------------------------------------------------------- I3


def test_r1_annotation_while_enforcement_is_off_is_rollback_skipped() -> None:
    """I3 / design 10: "a requested playbook that narrows the current env is applied ... one that
    would not narrow is recorded (RollbackSkipped, with why) and changes nothing"."""
    sim = world(spec_body("Canary"))
    walk_until(sim, "Observing", "Shadow")
    assert sim.env.get(ENFORCE) == "0"
    before = dict(sim.env)
    sim.annotate("R1")
    sim.tick()
    assert sim.status.last_rollback is None
    assert sim.status.state is State.OBSERVING
    assert sim.status.history[-1].reason == "RollbackSkipped"
    assert {k: sim.env.get(k) for k in before} == before


# --------------------------------------------------------------------------- I1 / I4


def test_person_narrowing_is_kept_when_the_deployment_is_recreated_while_halted() -> None:
    """I1/I4: "A narrower change is a person's emergency lever: it is kept, never re-widened";
    "In Halted the only action allowed is a narrowing". A Deployment recreated while Halted
    (EnvChangedOutside, ENFORCE set to 0 by hand) gets at most the env the operator kept
    (status.appliedEnv), never the Canary env the person switched off."""
    sim = world(spec_body("Full", batches=(), windows={"shadow": 20, "canary": 20}))
    walk_until(sim, "Observing", "Canary")
    sim.edit_env(ENFORCE, "0", "kubectl-set")
    sim.tick()
    assert sim.status.state is State.HALTED and sim.status.reason == "EnvChangedOutside"
    sim.delete_deployment()
    sim.tick()
    sim.recreate_deployment()
    sim.tick()
    assert sim.env.get(ENFORCE) != "1", (sim.env, sim.status.applied_env)
    assert scope_of(sim.env).symbols == frozenset()
    assert sim.status.state is State.HALTED


def test_r1_asked_while_the_deployment_was_missing_narrows_the_recreated_one() -> None:
    """Found by the state machine (I3): at AutoThreshold the Deployment is deleted, an R1
    annotation is set, the Deployment is recreated. The rung is re-applied and R1 taken in the
    same tick: ENFORCE=0 with AUTO_THRESHOLD left as it was enforces nothing."""
    sim = world(spec_body(target="AutoThreshold", canary=("S1", "S2"), batches=()))
    walk_until(sim, "Observing", "AutoThreshold")
    sim.delete_deployment()
    sim.tick()
    sim.annotate("R1")
    sim.tick()
    sim.recreate_deployment()
    sim.tick()
    assert sim.env.get(ENFORCE) == "0" and scope_of(sim.env).symbols == frozenset()
    assert sim.status.last_rollback is not None and sim.status.last_rollback.playbook.value == "R1"


def test_alert_queued_while_the_deployment_was_missing_narrows_the_rung_put_back() -> None:
    """Found by the state machine (I3): Passed at AutoThreshold, the Deployment is deleted, an
    alert without a `rollback` label fires, the Deployment is recreated in the starting state.
    The rung goes back on it and the alert's R3 narrows that rung: Full's env, never more."""
    sim = world(spec_body(target="AutoThreshold", canary=("S1", "S2"), batches=()))
    walk_until(sim, "Passed", "AutoThreshold")
    sim.delete_deployment()
    sim.tick()
    sim.alert("", sim.now)
    sim.tick()
    sim.recreate_deployment()
    sim.tick()
    assert sim.status.last_rollback is not None and sim.status.last_rollback.playbook.value == "R3"
    assert scope_of(sim.env).symbols is None and scope_of(sim.env).auto is False


def test_a_cb_trip_seen_at_resume_is_answered_before_the_spec_change_redoes_the_step() -> None:
    """Found by the state machine in CI (I5): Canary observing, suspended, minBps edited while
    suspended, a CB trip logged, then resumed. The spec change would redo Canary (a new token,
    whose pods are not there yet); the trip on the pods enforcing now is answered first: R1."""
    import json

    from dataclasses import replace

    sim = world(spec_body(target="AutoThreshold", canary=("S1", "S2"), batches=()))
    walk_until(sim, "Observing", "Canary")
    body = json.loads(json.dumps(sim.body))
    sim.set_spec({**body, "suspend": True})
    sim.tick()
    sim.set_spec({**body, "suspend": True, "minBps": 2600})
    sim.tick()
    line = "FILL_PROB_CIRCUIT_BREAKER_TRIPPED symbol=S1 reason=block_rate"
    sim.pods = (replace(sim.pods[0], cb_lines=(line,)), *sim.pods[1:])
    sim.tick()
    assert sim.status.state is State.SUSPENDED and sim.env.get(ENFORCE) == "1"
    sim.set_spec({**body, "minBps": 2600})
    sim.tick()
    assert sim.status.state is State.ROLLED_BACK and sim.status.last_rollback.playbook.value == "R1"
    assert sim.env.get(ENFORCE) == "0"


def test_two_symbols_dropped_by_hand_never_read_as_a_climb() -> None:
    """Found by the explore profile (I4): at Expand 2/2 someone drops a symbol, then another.
    Each narrowing is kept and Halted; the phase read back from the env only moves down (a set
    between two rungs reads as the rung it covers, "Expand 1/2 (+S5)"), never up."""
    from fillprob_operator.domain.ladder import ENFORCE_SYMBOLS

    sim = world(spec_body(target="Expand", canary=("S1", "S2"), batches=(("S4",), ("S5", "S6"))))
    walk_until(sim, "Observing", "Expand 2/2")
    sim.edit_env(ENFORCE_SYMBOLS, "S1,S2,S4,S5", "kubectl-set")
    sim.tick()
    first = (sim.status.state, sim.status.phase, sim.status.batch, sim.status.step)
    assert first == (State.HALTED, first[1], 1, "Expand 1/2 (+S5)") and first[1].value == "Expand"
    sim.edit_env(ENFORCE_SYMBOLS, "S1,S2,S4", "kubectl-set")
    sim.tick()
    assert (sim.status.state, sim.status.batch, sim.status.step) == (State.HALTED, 1, "Expand 1/2")


def _suspend_then(sim: Sim, *events) -> None:
    import json

    body = json.loads(json.dumps(sim.body))
    sim.set_spec({**body, "suspend": True})
    sim.tick()
    for event in events:
        event()
        sim.tick()
    sim.set_spec(body)
    sim.tick()


def test_a_request_queued_while_suspended_is_measured_against_a_narrowing_made_meanwhile() -> None:
    """Found by the explore profile (I3): at Full, suspended, an R1 alert arrives and someone
    sets ENFORCE=0 by hand. At resume the person's narrowing is read first (kept, Halted), so
    R1 would not narrow: RollbackSkipped, not an R1 recorded as applied."""
    sim = world(spec_body(target="Full", canary=("S1", "S2"), batches=(), min_bps=2600))
    walk_until(sim, "Observing", "Full")
    _suspend_then(sim, lambda: sim.alert("R1", sim.now), lambda: sim.edit_env(ENFORCE, "0", "kubectl-set"))
    assert sim.status.state is State.HALTED and sim.status.reason == "EnvChangedOutside"
    assert sim.status.last_rollback is None and sim.env.get(ENFORCE) == "0"
    assert "RollbackSkipped" in [h.action for h in sim.status.history[-3:]]


def test_a_min_bps_change_made_while_suspended_is_restored_with_the_rollback_in_one_patch() -> None:
    """Found by the explore profile (I8): at Full, suspended, an R1 annotation and someone moves
    MIN_BPS off spec.minBps. At resume one patch restores MIN_BPS and applies R1; deciding again
    after it took effect asks for nothing."""
    from fillprob_operator.domain.ladder import MIN_BPS

    sim = world(spec_body(target="Full", canary=("S1", "S2"), batches=(), min_bps=2600))
    walk_until(sim, "Observing", "Full")
    _suspend_then(sim, lambda: sim.annotate("R1"), lambda: sim.edit_env(MIN_BPS, "1000", "kubectl-set"))
    assert sim.env.get(MIN_BPS) == "2600" and sim.env.get(ENFORCE) == "0"
    again = decide_again(sim)
    assert [a for a in again.actions if isinstance(a, (PatchEnv, RunPreflight))] == []


def test_a_target_lowered_while_the_deployment_was_missing_rearms_once_it_is_back() -> None:
    """Found by the ci profile (stop 17; I4 in the model, not in the operator): rolled back at
    Expand (R2), the Deployment deleted, recreated, deleted again, targetPhase lowered to Shadow
    while it is missing, then recreated. The spec change re-arms the rollout once a tick can act
    on it (TargetLowered at Shadow); the model must not count the stopped status kept while the
    Deployment was missing as "no spec change since". The shrunk sequence, replayed on the state
    machine itself, every promise checked at every tick."""
    from test_invariants import EverydayChange

    machine = EverydayChange()
    machine.start(phase="Expand", batches=(), canary=("S1", "S2"), start_enforce="unset", window=20, walk=12,
                  min_bps=None)
    machine.circuit_breaker_trips(all_pods=False, via="log")
    machine.deployment_deleted()
    machine.deployment_recreated()
    machine.deployment_deleted()
    machine.target_phase_edited(phase="Shadow")
    machine.deployment_recreated()
    assert machine.sim.status.step == "Shadow" and machine.sim.status.reason == "TargetLowered"
    machine.teardown()


# --------------------------------------------------------------------------- I10


def test_a_cb_trip_answered_by_r2_does_not_escalate_on_the_pods_r2_is_replacing() -> None:
    """I10 (CI, e2e chaos run): Expand 1/1 trips its breaker, R2 is applied; one second later the
    Deployment carries R2's token but its newest ReplicaSet, and the pods observed, are still
    Expand's, CB lines and all. Those were answered by R2: no R1 until R2's own pods say so."""
    sim = world(spec_body("Expand", batches=(("S4", "S5"),)))
    walk_until(sim, "Observing", "Expand 1/1")
    cb = "FILL_PROB_CIRCUIT_BREAKER_TRIPPED symbol=S4 reason=block_rate"
    sim.pods = tuple(replace(p, cb_lines=(cb,), cb_trips=1.0) for p in sim.pods)
    sim.tick()
    assert (sim.status.last_rollback.playbook.value, sim.status.step) == ("R2", "Canary (R2)")
    r2 = sim.status.restart.token
    for _ in range(3):  # the Deployment controller has not made R2's ReplicaSet yet
        sim.advance(2)
        sim.tick()
        assert not sim.rs_current and sim.observations().deployment.new_pods
        assert (sim.status.last_rollback.playbook.value, sim.status.restart.token) == ("R2", r2)
    sim.complete_rollout()  # R2's pods: clean
    sim.tick()
    assert (sim.status.last_rollback.playbook.value, sim.status.restart.token) == ("R2", r2)
