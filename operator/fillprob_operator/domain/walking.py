"""Walking up the ladder (runbook 32 Phases 1-5): patch the step's env, wait for the rollout,
verify the new pods, observe for the step's window, pass, then the next step.

API.md "Walking the ladder": up one step at a time, only after the step below has Passed.
A Passed step below targetPhase stands for one evaluation interval before the next starts,
so `state: Passed` is seen in status for every step.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ..api import Phase, State, Threshold
from .durations import format_duration
from .findings import Finding, GateResult, Outcome, Signal
from .gates import parse_resolution, post_restart
from .ladder import EnvPatch
from .reasons import Progress, Reason
from .tick import Tick, rfc3339


def describe(patch: EnvPatch) -> str:
    parts = [f"{k}={v}" for k, v in patch.set_env.items()] + [f"{k} removed" for k in patch.remove_env]
    return ", ".join(parts) or "no env change"


def after_preflight(t: Tick) -> None:
    """First preflight: Shadow. A re-arm's preflight: the re-armed step (capped at target)."""
    if t.s.restart is None:
        start_step(t, 0, Progress.STEP_STARTED)
        return
    start_step(t, min(t.at_or_below(), t.target()), Progress.REARMED)


def start_step(t: Tick, index: int, reason: Progress) -> None:
    """Patch the step's env (and the restart token): the Deployment restarts."""
    s, step = t.s, t.ladder[index]
    patch, token = t.issue_restart(step.env(t.spec.min_bps))
    s.phase, s.batch, s.step = step.phase, step.batch, step.label
    s.enforced_symbols = t.enforced_now()
    s.state = State.RESTARTING
    s.observation_started_at = s.observation_ends_at = None
    s.paused_seconds = 0
    t.transition("RestartIssued", reason, f"env patched ({describe(patch)}), restarting (token {token})",
                 {"setEnv": dict(patch.set_env), "removeEnv": list(patch.remove_env), "restartToken": token})


# -- the restart -----------------------------------------------------------------------


def reached(t: Tick) -> None:
    """progressDeadline counts from the moment the patch reached the Deployment (API.md): the
    Deployment's own record of it when the adapter has one, else the first tick that saw it."""
    r = t.s.restart
    if r is not None and r.reached_at is None and t.patched() and t.obs.deployment.restart_token_at is None:
        t.s.restart = r.model_copy(update={"reached_at": t.now})


def reached_at(t: Tick) -> datetime | None:
    r = t.s.restart
    if r is None or not t.patched():
        return None
    return t.obs.deployment.restart_token_at or r.reached_at


def overdue(t: Tick) -> bool:
    since = reached_at(t)
    return since is not None and t.now - since > t.spec.progress_deadline


def timed_out(t: Tick, why: str) -> None:
    from . import rollback

    d, token = t.obs.deployment, t.s.restart.token  # type: ignore[union-attr]
    rollback.no_go(t, [Finding(Signal.RESTART_TIMED_OUT, Reason.RESTART_TIMED_OUT,
                               f"restart {token} not done within progressDeadline "
                               f"{format_duration(t.spec.progress_deadline)} of reaching the Deployment: {why}",
                               {"rolloutMessage": d.rollout_message, "restartToken": token,
                                "reachedAt": rfc3339(reached_at(t))})])  # type: ignore[arg-type]


def restarting(t: Tick) -> None:
    from . import guarding

    if t.rolled_out():
        t.s.state = State.VERIFYING
        t.transition("RolloutComplete", Progress.ROLLOUT_COMPLETE,
                     t.obs.deployment.rollout_message or "rollout complete; verifying the new pods",
                     {"restartToken": t.s.restart.token})  # type: ignore[union-attr]
    elif overdue(t):
        timed_out(t, t.obs.deployment.rollout_message or "rollout not complete")
    else:
        guarding.danger_only(t)


def verify(t: Tick) -> GateResult | None:
    """Post-restart checks; PASS/NO_GO returned, WAIT/NO_DATA handled (None)."""
    from . import guarding

    if not t.rolled_out():
        if overdue(t):
            timed_out(t, t.obs.deployment.rollout_message or "rollout not complete")
        else:
            guarding.danger_only(t)
        return None
    result = post_restart(t.obs.deployment.new_pods, t.obs.metrics, guarding.expectation(t), guarding.baseline(t))
    if result.outcome is Outcome.WAIT:
        if overdue(t):
            timed_out(t, result.message)
        return None
    if result.outcome is not Outcome.NO_GO:
        guarding.track_metrics(t, result)
    return None if result.outcome is Outcome.NO_DATA else result


def verifying(t: Tick) -> None:
    from . import rollback

    result = verify(t)
    if result is None:
        return
    if result.outcome is Outcome.NO_GO:
        rollback.no_go(t, list(result.findings))
        return
    verified(t)
    start_observation(t)


def verified(t: Tick) -> None:
    """Post-restart checks held: note the thresholds the new pods logged."""
    s = t.s
    s.restart = s.restart.model_copy(update={"verified": True})  # type: ignore[union-attr]
    for pod in t.obs.deployment.new_pods:
        r = parse_resolution(pod.resolution_line or "")
        if r.kind == "ok":
            s.threshold = Threshold(configured_bps=r.configured_bps, recommended_bps=r.recommended_bps,
                                    effective_bps=r.effective_bps, mode=r.mode)
            break


# -- the window ------------------------------------------------------------------------


def start_observation(t: Tick) -> None:
    from . import guarding

    s = t.s
    s.observation_started_at, s.paused_seconds = t.now, 0
    s.state = State.OBSERVING
    s.observation_ends_at = t.window_ends()
    pods = t.obs.deployment.new_pods
    t.transition("ObservationStarted", Progress.POST_RESTART_CHECKS_PASSED,
                 f"post-restart checks passed on {len(pods)} new pod(s); observing for at least "
                 f"{format_duration(t.spec.observation_window(s.phase))}, until {rfc3339(s.observation_ends_at)}",
                 {"logLines": [f"{p.pod}: {p.resolution_line}" for p in pods], **guarding.gauges(t)})


def follow_spec(t: Tick) -> None:
    """The current step's window as the spec says now; never before the time already observed."""
    s = t.s
    if s.state is not State.OBSERVING or s.observation_started_at is None:
        return
    ends = t.window_ends()
    if ends is None:
        # No window at this phase (Preflight): a status that says Observing there was not
        # written by this operator; keep what it says rather than fail every tick.
        return
    if ends < t.now and s.observation_ends_at is not None and ends < s.observation_ends_at:
        ends = t.now  # lowered below what is already observed: the window ends now
    s.observation_ends_at = ends


def observing(t: Tick) -> None:
    from . import guarding

    follow_spec(t)
    if guarding.watch(t) is None:
        return
    ends: datetime | None = t.s.observation_ends_at
    if ends is not None and t.now >= ends:
        step_passed(t)


def step_passed(t: Tick) -> None:
    from . import guarding

    s = t.s
    current = t.current()
    step = t.ladder[current] if current is not None else None
    s.state = State.PASSED
    if step is not None and step.allowlist:
        s.last_known_good_symbols = list(step.allowlist)
    t.transition("StepPassed", Reason.OBSERVATION_PASSED,
                 f"passed: observed from {rfc3339(s.observation_started_at)} to "  # type: ignore[arg-type]
                 f"{rfc3339(t.now)} with no no-go signal", guarding.gauges(t))


def passed(t: Tick) -> None:
    """Guarding never ends; the next step only after one evaluation interval in Passed."""
    from . import guarding, phase0

    if guarding.watch(t) is None:
        return
    current, target = t.current(), t.target()
    if current is None or current >= target or t.not_ready is not None or phase0.rerun_running(t):
        return
    ends = t.s.observation_ends_at
    if ends is not None and t.now < ends + t.spec.prometheus.interval:
        return
    if t.ladder[current + 1].phase is Phase.AUTO_THRESHOLD and refuse_auto_threshold(t):
        return
    start_step(t, current + 1, Progress.STEP_STARTED)


def refuse_auto_threshold(t: Tick) -> bool:
    """gates.maxAutoThresholdDeltaBps: runbook 32 5.1, recommended vs configured."""
    limit = t.spec.gates.max_auto_threshold_delta_bps
    if limit is None:
        return False
    th = t.s.threshold or Threshold()
    if th.recommended_bps is not None and th.configured_bps is not None:
        delta = abs(th.recommended_bps - th.configured_bps)
        if delta <= limit:
            return False
        why = (f"not entering AutoThreshold: |recommended {th.recommended_bps} - configured {th.configured_bps}| "
               f"= {delta} bps exceeds gates.maxAutoThresholdDeltaBps {limit}; accept the recommendation "
               "(spec.minBps) or raise the limit")
    else:
        why = "not entering AutoThreshold: recommended/configured threshold unknown (no resolution line yet)"
    if t.s.reason != Reason.UNEXPECTED_THRESHOLD.value or t.s.message != why:
        t.transition("AutoThresholdRefused", Reason.UNEXPECTED_THRESHOLD, why,
                     {"threshold": th.model_dump(by_alias=True, exclude_none=True), "maxDeltaBps": limit},
                     warning=True)
    return True


def pause(t: Tick, since: datetime) -> timedelta | None:
    """Time from `since` to now did not count (metrics missing, suspended): the window moves."""
    s = t.s
    observing = State.OBSERVING in (s.state, s.resume_state if s.state is State.SUSPENDED else None)
    if s.observation_started_at is None or not observing:
        return None
    lost = t.now - max(since, s.observation_started_at)
    if lost <= timedelta(0):
        return None
    s.paused_seconds += int(lost.total_seconds())
    s.observation_ends_at = t.window_ends()
    return lost
