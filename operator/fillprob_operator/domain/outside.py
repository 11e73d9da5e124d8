"""Outside requests and outside changes (API.md "Gates: Manual and alert-driven rollback" and
"Everyday change"): `grinder.io/rollback` annotations, Alertmanager alerts, and env changed by
someone else.

- A requested playbook that narrows the current env is applied, whatever the alert's startsAt;
  one that would not narrow is recorded (RollbackSkipped, with why) and changes nothing. Each
  request key (alert fingerprint + startsAt, annotation value + when it was set) at most once.
- Env changed by someone else: a narrower change is a person's emergency lever, kept, never
  re-widened; any other change is an ungated widening, undone at once. Both halt
  (EnvChangedOutside) until a spec change.
"""

from __future__ import annotations

from ..api import AppliedEnv, Playbook, State
from .actions import ClearRollbackAnnotation
from .findings import Signal
from .ladder import AUTO_THRESHOLD, ENFORCE, ENFORCE_SYMBOLS, MIN_BPS, applied_env_from, phase_of_env
from .observations import RollbackRequest
from .playbooks import HALT, response_to
from .reasons import Progress, Reason
from .scope import scope_of, within
from .tick import Tick, env_patch_to, rfc3339

REQUEST_KEYS_LIMIT = 100
_FIELDS = {ENFORCE: "enforce", ENFORCE_SYMBOLS: "enforce_symbols", AUTO_THRESHOLD: "auto_threshold",
           MIN_BPS: "min_bps"}


# -- rollback requests -----------------------------------------------------------------


def seen(t: Tick, key: str) -> bool:
    return bool(key) and (key in t.s.request_keys or any(h.evidence.get("requestKey") == key for h in t.s.history))


def rollback_requests(t: Tick) -> None:
    """Annotations and alerts, each taken once (recorded in history and status.requestKeys)."""
    for request in t.obs.rollback_requests:
        manual = request.reason == Reason.MANUAL_ROLLBACK.value
        if manual and not any(isinstance(a, ClearRollbackAnnotation) for a in t.requests_done):
            t.requests_done.append(ClearRollbackAnnotation())
        if seen(t, request.key):
            continue
        if request.key:
            t.s.request_keys = [*t.s.request_keys, request.key][-REQUEST_KEYS_LIMIT:]
        apply(t, request, Reason.MANUAL_ROLLBACK if manual else Reason.ALERT_FIRED)


def apply(t: Tick, request: RollbackRequest, reason: Reason) -> None:
    from . import rollback

    s = t.s
    evidence = {**dict(request.evidence), "requestKey": request.key, "source": request.source}
    if request.playbook not in ("", *(p.value for p in Playbook)):
        t.transition("RollbackRejected", Progress.ROLLBACK_REQUEST_INVALID,
                     f"{reason.value} asked for {request.playbook!r}: use R1, R2 or R3", evidence,
                     warning=True, sets_reason=False)
        return
    if s.restart is None:
        skipped(t, reason, request, "nothing applied yet, nothing to roll back", evidence)
        return
    if request.playbook:
        response = Playbook(request.playbook)
    else:  # an alert without a `rollback` label: the table's playbook for a CB trip here
        response = response_to(Signal.CIRCUIT_BREAKER_TRIP, s.phase)
        if response == HALT or response is None:
            if s.state in (State.HALTED, State.ROLLED_BACK):
                skipped(t, reason, request, f"already {s.state.value}, and the gate table says Halt here", evidence)
            else:
                t.halt(reason, f"{request.source}: the gate table says Halt for a CB trip at {s.step}", evidence)
            return
    playbook = Playbook(response)
    if not rollback.would_narrow(t, playbook):
        after = scope_of(rollback.env_after(t, playbook)).describe()
        skipped(t, reason, request, f"{playbook.value} would not narrow the current env ({after}, as now)", evidence)
        return
    rollback.roll_back(t, playbook, reason.value, request.source, evidence)


def skipped(t: Tick, reason: Reason, request: RollbackRequest, why: str, evidence: dict) -> None:
    t.transition("RollbackSkipped", Reason.ROLLBACK_SKIPPED, f"{reason.value} ({request.source}): {why}",
                 {**evidence, "why": why}, sets_reason=False)


# -- env changed by someone else ------------------------------------------------------


def managed_now(t: Tick) -> AppliedEnv:
    """The Deployment's managed keys (MIN_BPS only when spec.minBps manages it)."""
    env = applied_env_from(t.obs.deployment.env)
    if t.spec.min_bps is None:
        env = env.model_copy(update={"min_bps": t.applied.min_bps})
    return env


def env_changed(t: Tick) -> None:
    """Compare the Deployment's managed keys with the rung's, once our restart reached it."""
    s = t.s
    if s.restart is None or not t.patched() or s.state is State.PENDING:
        return
    theirs, ours = managed_now(t), t.applied
    if theirs == ours:
        return
    changed = {key: {"from": getattr(ours, attr), "to": getattr(theirs, attr)}
               for key, attr in _FIELDS.items() if getattr(ours, attr) != getattr(theirs, attr)}
    managers = t.obs.deployment.env_managers
    who = sorted({managers.get(key) or "unknown" for key in changed})
    what = ", ".join(f"{k} {v['from']!r} -> {v['to']!r}" for k, v in changed.items())
    evidence = {"changedBy": who, "changed": changed, "restartToken": s.restart.token}
    min_bps_moved = MIN_BPS in changed and t.spec.min_bps is not None
    if within(theirs, ours) and not min_bps_moved:
        s.applied_env = theirs
        kept = env_patch_to(theirs)  # a recreated Deployment gets this env back, not the rung's
        s.restart = s.restart.model_copy(update={"set_env": dict(kept.set_env), "remove_env": list(kept.remove_env)})
        phase, batch, label = phase_of_env(theirs, t.ladder, tuple(t.spec.safe_symbols))
        s.phase, s.batch, s.step = phase, batch, label
        s.enforced_symbols = t.enforced_now()
        s.observation_started_at = s.observation_ends_at = None
        t.halt(Reason.ENV_CHANGED_OUTSIDE,
               f"env changed by {', '.join(who)} ({what}): narrower, kept as a person's emergency lever; "
               "the operator will not widen it. Re-arm with a spec change (e.g. targetPhase) when done",
               {**evidence, "kept": True})
        return
    patch, token = t.issue_restart(env_patch_to(ours), fold=False)
    s.observation_started_at = s.observation_ends_at = None
    t.halt(Reason.ENV_CHANGED_OUTSIDE,
           f"env changed by {', '.join(who)} ({what}): an ungated widening, restored to the rung's env "
           f"(restart {token}); halted. Re-arm with a spec change when the change is understood",
           {**evidence, "kept": False, "restoredEnv": dict(patch.set_env), "newRestartToken": token,
            "at": rfc3339(t.now)})
