"""decide(spec, status, observations, now) -> Decision: the next status and what to do.

Runbook 32 as a state machine (STYLE.md "Decide, then act"). Pure: no I/O, no clock, no
logging. The adapters persist `Decision.status` first (the status is the intent), then execute
`Decision.actions` in order; nothing to write when `changed` is False.

`decide()` asks the questions in the order a person on call would, each answered by one module:
1. can I act at all?          lifecycle: the spec, suspend, the Deployment (missing, recreated);
                              outside: the env as someone else left it (kept or restored)
2. did someone ask?           outside: annotation and alert rollbacks (narrow or nothing)
3. is anything wrong now?     guarding: a CB trip or all-blocked symbol on the pods enforcing
                              now, answered before anything moves the restart token
4. did the spec change?       lifecycle: re-arm on a real change; a lower target at once
5. may I climb?               phase0 (model changed, preflight reruns), then each state's
                              handler: walking, guarding, rollback
Then report writes the conditions and the actions.

States (API.md): Pending -> Preflight -> Restarting -> Verifying -> Observing -> Passed ->
(next step's Restarting while targetPhase is higher). A no-go -> the gate table's playbook
(RolledBack) or Halted. Suspended = change nothing, keep reporting.

Crash safety: every restart carries a token f"{generation}-{seq}" kept in status.restart.
The PatchEnv is (re-)issued only while the Deployment does not carry that token, a recorded
rollback is never re-applied, and a request whose key is in status is ignored. Calling decide
again with the same inputs after its actions took effect gives no action and an identical
status. A Deployment carrying a newer token than status (a lost status write) is never
overwritten: decide holds (StatusBehindDeployment) until a spec change re-arms from its env.

Choices where API.md is silent are in docs/concepts.md ("Choices"), each next to its rule's
module: the phase after a rollback is the rung whose env is applied (R1 -> Shadow, R2 -> the
rung with that allowlist, R3 -> Full); simultaneous findings: a playbook beats Halt, R1 > R2 >
R3; a Passed step below target stands one evaluation interval; maxAutoThresholdDeltaBps keeps
the rollout Passed at Full.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..api import FillProbRolloutSpec, RolloutStatus, State
from . import guarding, lifecycle, outside, phase0, report, rollback, walking
from .actions import Action
from .observations import Observations
from .phase0 import preflight_job_name, starting_state_problems  # noqa: F401 (public API)
from .tick import Tick, restart_token, utc_seconds  # noqa: F401 (public API)

_MAX_TRANSITIONS_PER_CALL = 16

# The ladder's states and who handles them; Halted guards (narrowing only), Suspended reports.
_HANDLERS = {
    State.PENDING: phase0.pending,
    State.PREFLIGHT: phase0.foreground,
    State.RESTARTING: walking.restarting,
    State.VERIFYING: walking.verifying,
    State.OBSERVING: walking.observing,
    State.PASSED: walking.passed,
    State.ROLLED_BACK: rollback.rolled_back,
    State.HALTED: guarding.halted,
}


@dataclass(frozen=True)
class Decision:
    status: RolloutStatus
    actions: tuple[Action, ...]
    changed: bool


def decide(
    spec: FillProbRolloutSpec,
    status: RolloutStatus | None,
    observations: Observations,
    now: datetime,
    *,
    generation: int,
    name: str,
    namespace: str,
    scratch: RolloutStatus | None = None,
) -> Decision:
    """The next status and actions for one FillProbRollout (see the module docstring).

    `status` is never changed. `scratch`, if given, is a second copy equal to `status` that
    decide may change (e.g. the same dict parsed twice): then `status` is not deep-copied."""
    t = Tick(spec, status, observations, utc_seconds(now), generation, name, namespace, scratch)
    _reconcile(t)
    return _decision(t)


def _reconcile(t: Tick) -> None:
    s = t.s
    # 1. Can I act at all?
    new_generation = s.observed_generation is not None and s.observed_generation != t.generation
    changed = lifecycle.take_spec(t)
    if t.spec.suspend:
        if not t.obs.spec_error:
            s.observed_generation = t.generation
        lifecycle.suspend(t)
        return
    if s.state is State.SUSPENDED:
        lifecycle.resume(t)
    if not lifecycle.find_deployment(t):
        return  # observedGeneration stays: the new generation is acted on once it can be
    lifecycle.recreated(t)
    if lifecycle.deployment_ahead(t):
        if not changed:
            return
        lifecycle.adopt_deployment(t)
    walking.reached(t)
    # Did someone else change the env? (read first: "narrower" below is measured from it)
    outside.env_changed(t)
    # 2. Did someone ask for a rollback? 3. Is anything wrong now? Both before anything else
    # moves the restart token: the pods enforcing now are judged first (guarding never waits).
    rolled_back = s.last_rollback
    outside.rollback_requests(t)
    answered = guarding.first(t) or s.last_rollback != rolled_back
    # 4. Did the spec change? (a change that came with a rollback or halt does not re-arm past it)
    if not t.obs.spec_error:
        s.observed_generation = t.generation
        if new_generation:
            lifecycle.replan(t, changed and not answered)
    # 5. The model (preflight reruns), then each state's handler: gates, and may I climb?
    phase0.changed_dirs(t)
    phase0.background(t)
    for _ in range(_MAX_TRANSITIONS_PER_CALL):
        before = (s.state, s.phase, s.batch, s.restart.seq if s.restart else 0)
        _HANDLERS[s.state](t)
        if s.state is State.HALTED or before == (s.state, s.phase, s.batch, s.restart.seq if s.restart else 0):
            return


def _decision(t: Tick) -> Decision:
    report.count_enforced_symbols(t)
    report.sync_conditions(t)
    actions = report.actions(t)
    if t.original is not None and t.s == t.original:
        return Decision(t.original, tuple(actions), False)
    return Decision(t.s, tuple(actions), True)
