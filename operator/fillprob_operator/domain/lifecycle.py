"""Suspend and lifecycle (API.md "Everyday change"): spec changes, a spec that cannot be read,
suspend and resume, the Deployment missing, recreated, or ahead of status.

- A spec change is a new generation whose spec, `suspend` aside, differs from the one applied
  (status.appliedSpec): it re-arms a Halted or RolledBack rollout; toggling suspend does not.
- Down moves never wait: a lower targetPhase is applied within one tick in every state but
  Suspended.
- A spec the operator cannot read: it keeps guarding the current rung with the last spec it
  applied, Ready=False reason InvalidSpec.
- Suspended: changes nothing, keeps reporting, time does not count.
- Deployment missing: the window pauses (Progressing=False, DeploymentMissing); recreated: the
  rung's env is re-applied, the new pods verified, the window starts again.
"""

from __future__ import annotations

from typing import Any

from ..api import Restart, State
from .ladder import applied_env_from, phase_of_env
from .outside import managed_now
from .scope import within
from .reasons import Progress, Reason
from .tick import Tick, env_patch_to, token_seq


def _without_suspend(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if spec is None else {k: v for k, v in spec.items() if k != "suspend"}


def take_spec(t: Tick) -> bool:
    """Record the spec read for this generation; True when it is a spec change (re-arming)."""
    s = t.s
    if t.obs.spec_error:
        t.not_ready = (Reason.INVALID_SPEC.value,
                       f"generation {t.generation} cannot be read ({t.obs.spec_error}); guarding the current "
                       f"rung with the spec of generation {s.observed_generation}")
        return False
    new_generation = s.observed_generation is not None and s.observed_generation != t.generation
    current = t.spec.json_form
    if s.applied_spec is None:
        changed = new_generation  # a status written before appliedSpec existed
    else:
        changed = new_generation and _without_suspend(s.applied_spec) != _without_suspend(current)
    # A change made while suspended is a change at resume. An equal appliedSpec stays the
    # status's own (the steady state's every tick): `current` is the spec's, shared.
    if not t.spec.suspend and s.applied_spec != current:
        s.applied_spec = current
    listed = t.spec_symbols()
    s.last_known_good_symbols = [x for x in s.last_known_good_symbols if x in listed]
    return changed


def suspend(t: Tick) -> None:
    from . import guarding

    s = t.s
    if s.state is not State.SUSPENDED:
        s.resume_state, s.state, s.suspended_at = s.state, State.SUSPENDED, t.now
        t.transition("Suspended", Progress.SUSPENDED, "spec.suspend is true: changing nothing, still reporting",
                     {"resumeState": s.resume_state.value})
    guarding.while_suspended(t)


def resume(t: Tick) -> None:
    from . import walking

    s = t.s
    since = s.suspended_at or t.now
    # A resumeState of Suspended (hand-written: this operator never records one) resumes as
    # Pending, which re-verifies the rung before anything moves.
    back = s.resume_state if s.resume_state not in (None, State.SUSPENDED) else State.PENDING
    s.state, s.resume_state, s.suspended_at = back, None, None
    walking.pause(t, since)
    t.transition("Resumed", Progress.RESUMED, "spec.suspend cleared: resuming; every signal is evaluated first",
                 {"suspendedSeconds": int((t.now - since).total_seconds())})


def find_deployment(t: Tick) -> bool:
    deployment, wanted = t.obs.deployment, t.spec.container_name
    if not deployment.exists:
        t.blocker = (Reason.DEPLOYMENT_MISSING.value,
                     f"Deployment {t.namespace}/{t.spec.deployment_name} not found: the window is paused; "
                     "when it exists again the rung's env is re-applied and verified")
        return False
    names = deployment.container_names
    if wanted is None:
        t.container = names[0] if names else None
    else:
        t.container = wanted if (wanted in names or not names) else None
    if t.container is None:
        t.blocker = (Progress.CONTAINER_NOT_FOUND.value,
                     f"container {wanted!r} not in Deployment {t.spec.deployment_name} "
                     f"(containers: {', '.join(names) or 'none'}): fix spec.containerName")
        return False
    return True


def recreated(t: Tick) -> None:
    """A Deployment deleted and created again (another uid): re-apply the rung and verify anew."""
    from . import walking

    s, uid = t.s, t.obs.deployment.uid
    if not uid:
        return
    if s.deployment_uid is None or s.restart is None:
        s.deployment_uid = uid
        return
    if uid == s.deployment_uid:
        return
    old, s.deployment_uid = s.deployment_uid, uid
    wanted = t.applied
    if s.state is State.HALTED:  # nothing but a narrowing: the narrower of its env and the rung's
        theirs = managed_now(t)
        if within(theirs, wanted):
            wanted = s.applied_env = theirs
            s.phase, s.batch, s.step = phase_of_env(theirs, t.ladder, tuple(t.spec.safe_symbols))
    patch, token = t.issue_restart(env_patch_to(wanted), fold=False)
    evidence = {"oldUid": old, "newUid": uid, "setEnv": dict(patch.set_env), "restartToken": token}
    if s.state is State.ROLLED_BACK:
        s.restart = s.restart.model_copy(update={"verified": False})  # type: ignore[union-attr]
    elif s.state not in (State.PREFLIGHT, State.HALTED):
        s.state = State.RESTARTING
    s.observation_started_at = s.observation_ends_at = None
    s.paused_seconds = 0
    t.transition("RestartIssued", Reason.DEPLOYMENT_MISSING,
                 f"Deployment {t.spec.deployment_name} was recreated: the rung's env re-applied "
                 f"({walking.describe(patch)}), verifying the new pods (token {token})", evidence, warning=True)


def deployment_ahead(t: Tick) -> bool:
    """The Deployment carries a newer restart token than status: a status write was lost after
    its PatchEnv ran (adapters write status first). Re-issuing ours would undo that patch."""
    ours = t.s.restart.seq if t.s.restart else 0
    theirs = token_seq(t.obs.deployment.restart_token)
    if theirs is None or theirs <= ours:
        return False
    t.blocker = (Progress.STATUS_BEHIND.value,
                 f"the Deployment carries restart token {t.obs.deployment.restart_token}, newer than "
                 f"status ({t.s.restart.token if t.s.restart else 'none'}): holding; check the "
                 "Deployment's env and re-arm with a spec change")
    return True


def adopt_deployment(t: Tick) -> None:
    """Re-arming after a lost status write: take the Deployment's env and token as they are."""
    s, d = t.s, t.obs.deployment
    s.applied_env = applied_env_from(d.env)
    s.restart = Restart(seq=token_seq(d.restart_token) or 0, token=d.restart_token or "", issued_at=t.now,
                        reached_at=t.now)
    s.phase, s.batch, s.step = phase_of_env(s.applied_env, t.ladder, tuple(t.spec.safe_symbols))
    s.state, t.blocker = State.HALTED, None


def replan(t: Tick, changed: bool) -> None:
    """A new spec: re-arm Halted/RolledBack (a real change only); a lower target at once."""
    from . import walking

    s, target = t.s, t.target()
    if s.restart is None:
        if s.state is State.HALTED and changed:
            s.state = State.PENDING
            t.transition("Rearmed", Progress.REARMED, "spec changed: starting over from Phase 0",
                         {"generation": t.generation})
        return
    current = t.at_or_below()
    if s.state in (State.HALTED, State.ROLLED_BACK):
        if changed:
            start = t.rung_within()
            rearm(t, min(start, target), lower=target < start)
        elif target < current:
            walking.start_step(t, target, Progress.TARGET_LOWERED)
    elif target < current:
        walking.start_step(t, target, Progress.TARGET_LOWERED)
    elif s.state is not State.PREFLIGHT and step_env_changed(t):
        walking.start_step(t, current, Progress.STEP_CHANGED)


def rearm(t: Tick, index: int, *, lower: bool) -> None:
    """Redo the effective rung (capped at targetPhase); its preflight first unless it passed for
    these dirs (a lower rung is applied at once: down moves never wait)."""
    from . import phase0, walking

    s = t.s
    s.phase, s.batch = t.ladder[index].phase, t.ladder[index].batch
    if lower or phase0.preflight_ok(t):
        walking.start_step(t, index, Progress.REARMED)
        if not phase0.preflight_ok(t):
            phase0.start(t, Progress.MODEL_CHANGED, foreground=False)
    else:
        phase0.start(t, Progress.MODEL_CHANGED, foreground=True)


def step_env_changed(t: Tick) -> bool:
    """The applied step's env in the new spec differs from what is applied (e.g. minBps)."""
    exact = t.current()
    if exact is None:
        return True
    applied = t.applied
    return t.ladder[exact].env(t.spec.min_bps).apply_to(applied) != applied
