"""Runbook 32 Phase 0: the dirs are set (0.1), preflight passes (0.2), the starting state (0.3).

The first preflight runs in the foreground (state Preflight; nothing is applied yet). A rerun
(the model or eval dir changed) runs in the background in every state but Suspended: the
state stays, guarding goes on, nothing climbs while it runs (API.md, Everyday change).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Mapping

from ..api import PreflightRun, State, Threshold
from .durations import format_duration
from .findings import Finding, Signal
from .log_gates import key_values
from .ladder import AUTO_THRESHOLD, ENFORCE, ENFORCE_SYMBOLS, MIN_BPS, applied_env_from
from .observations import JobState, PreflightObservation
from .reasons import Progress, Reason
from .tick import Tick, rfc3339, unset_dirs

# The preflight Job fails itself at spec.preflight.timeout (activeDeadlineSeconds); this is
# how much longer the operator waits for it to say so before calling it failed.
PREFLIGHT_GRACE = timedelta(seconds=60)


def preflight_job_name(name: str, run: int) -> str:
    """`<name>-preflight-<run>`, kept within 63 characters (Job names become label values)."""
    suffix = f"-preflight-{run}"
    return name[: 63 - len(suffix)].rstrip("-.") + suffix


def starting_state_problems(env: Mapping[str, str | None], min_bps: int | None) -> list[str]:
    """Runbook 32 0.3: ENFORCE and AUTO_THRESHOLD 0 or unset, ENFORCE_SYMBOLS unset, MIN_BPS set."""
    problems = []
    for key in (ENFORCE, AUTO_THRESHOLD):
        if key in env and env[key] != "0":
            problems.append(f"{key}={env[key]!r} (expected 0 or unset)")
    if ENFORCE_SYMBOLS in env:
        problems.append(f"{ENFORCE_SYMBOLS}={env[ENFORCE_SYMBOLS]!r} (expected unset)")
    if min_bps is None and not (env.get(MIN_BPS) or (MIN_BPS in env and env[MIN_BPS] is None)):
        problems.append(f"{MIN_BPS} is unset (set it on the container or set spec.minBps)")
    return problems


def pending(t: Tick) -> None:
    """0.1 and 0.3, then the first preflight."""
    s, env = t.s, dict(t.obs.deployment.env)
    if unset := unset_dirs(env):
        t.halt(Reason.MODEL_DIR_UNSET, f"set {', '.join(unset)} on container {t.container} (runbook 32 Phase 0.1)",
               {"unset": unset})
        return
    if s.restart is None:
        problems = starting_state_problems(env, t.spec.min_bps)
        if problems:
            t.halt(Reason.STARTING_STATE_INVALID,
                   "the container is not in runbook 32's starting state (0.3): " + "; ".join(problems)
                   + "; nothing was changed",
                   {"env": {k: env.get(k) for k in (ENFORCE, AUTO_THRESHOLD, ENFORCE_SYMBOLS, MIN_BPS)}})
            return
        s.applied_env = applied_env_from(env)
    start(t, Progress.PREFLIGHT_STARTED, foreground=True)


def preflight_ok(t: Tick) -> bool:
    """The last preflight passed (or is disabled) for the dirs the container has now."""
    pf = t.s.preflight
    if not t.spec.preflight.enabled:
        return True
    return pf is not None and pf.state in ("Succeeded", "Skipped") and t.model_dirs() == (pf.model_dir, pf.eval_dir)


def rerun_running(t: Tick) -> bool:
    pf = t.s.preflight
    return pf is not None and pf.state == "Running" and t.s.state is not State.PREFLIGHT


def start(t: Tick, reason: Progress, *, foreground: bool) -> None:
    s = t.s
    model_dir, eval_dir = t.model_dirs()
    run = (s.preflight.run + 1) if s.preflight else 1
    dirs = {"modelDir": model_dir, "evalDir": eval_dir}
    if not t.spec.preflight.enabled:
        s.preflight = PreflightRun(run=run, state="Skipped", started_at=t.now, model_dir=model_dir, eval_dir=eval_dir)
        s.threshold = (s.threshold or Threshold()).model_copy(update={"recommended_bps": None})
        t.transition("PreflightSkipped", Progress.PREFLIGHT_SKIPPED, "preflight.enabled is false", dirs,
                     sets_reason=foreground)
        if foreground:
            from . import walking

            walking.after_preflight(t)
        return
    if s.threshold is not None:  # a new model/eval may recommend a new value: not a jump
        s.threshold = s.threshold.model_copy(update={"recommended_bps": None})
    job = preflight_job_name(t.name, run)
    s.preflight = PreflightRun(run=run, job_name=job, state="Running", started_at=t.now,
                               model_dir=model_dir, eval_dir=eval_dir)
    if foreground:
        s.state = State.PREFLIGHT
    why = "model/eval dir changed: " if reason is Progress.MODEL_CHANGED else ""
    where = "" if foreground else f" in the background ({s.state.value} goes on, guarded)"
    t.transition("PreflightStarted", reason, f"{why}preflight Job {job} started (runbook 32 Phase 0.2){where}",
                 {"job": job, **dirs}, sets_reason=foreground)


def foreground(t: Tick) -> None:
    """State Preflight: the first run (or a re-arm's); guarded when a step is already applied."""
    from . import guarding, walking

    if t.s.restart is not None:
        guarding.watch(t)
        if t.s.state is not State.PREFLIGHT:
            return
    pf = t.s.preflight
    if pf is None or pf.state != "Running":
        start(t, Progress.PREFLIGHT_STARTED, foreground=True)
        return
    if t.model_dirs() != (pf.model_dir, pf.eval_dir) and not unset_dirs(t.obs.deployment.env):
        start(t, Progress.MODEL_CHANGED, foreground=True)  # this run checks dirs no longer set
        return
    seen = _seen(t)
    if seen is not None and seen.state is JobState.SUCCEEDED:
        _passed(t, seen.output, foreground=True)
        walking.after_preflight(t)
    elif (why := _failed(t, seen)) is not None:
        _fail(t, *why)


def changed_dirs(t: Tick) -> None:
    """Preflight reruns when the model or eval dir values change, in every state but Suspended
    (API.md: including RolledBack and Halted); a required dir removed is a no-go (skipped row)."""
    s = t.s
    if s.restart is None or s.preflight is None or s.state in (State.PREFLIGHT, State.PENDING):
        return
    pf = s.preflight
    if t.model_dirs() == (pf.model_dir, pf.eval_dir):
        return
    if unset := unset_dirs(t.obs.deployment.env):
        if s.state not in (State.HALTED,) and (pf.model_dir, pf.eval_dir) != (None, None):
            from . import rollback

            s.preflight = pf.model_copy(update={"model_dir": None, "eval_dir": None, "state": "Failed"})
            rollback.no_go(t, [Finding(Signal.RESOLUTION_FAILED, Reason.MODEL_DIR_UNSET,
                                       f"{', '.join(unset)} removed from container {t.container}", {"unset": unset})])
        return
    start(t, Progress.MODEL_CHANGED, foreground=False)


def background(t: Tick) -> None:
    """A rerun's result: passed -> a walking step is redone with the new model; failed while
    enforcing -> R1 (PreflightFailed), then Halted."""
    from . import walking

    if not rerun_running(t):
        return
    seen = _seen(t)
    if seen is not None and seen.state is JobState.SUCCEEDED:
        _passed(t, seen.output, foreground=False)
        if t.s.state in (State.RESTARTING, State.VERIFYING, State.OBSERVING, State.PASSED):
            walking.start_step(t, min(t.at_or_below(), t.target()), Progress.MODEL_CHANGED)
    elif (why := _failed(t, seen)) is not None:
        _fail(t, *why)


def _seen(t: Tick) -> PreflightObservation | None:
    pf, seen = t.s.preflight, t.obs.preflight
    return seen if seen is not None and pf is not None and seen.job_name == pf.job_name else None


def _failed(t: Tick, seen: PreflightObservation | None) -> tuple[str, dict] | None:
    pf = t.s.preflight
    assert pf is not None
    if seen is not None and seen.state is JobState.FAILED:
        fails = [line for line in seen.output.splitlines() if "FAIL" in line][:20]
        message = (f"preflight Job {pf.job_name} failed (exit code {seen.exit_code}): "
                   + ("; ".join(fails[:3]) or "see the Job's log"))
        return message, {"job": pf.job_name, "exitCode": seen.exit_code,
                         "logLines": fails or seen.output.splitlines()[-20:]}
    if pf.started_at and t.now > pf.started_at + t.spec.preflight.timeout + PREFLIGHT_GRACE:
        return (f"preflight Job {pf.job_name} did not finish within preflight.timeout "
                f"{format_duration(t.spec.preflight.timeout)}"), {"job": pf.job_name, "startedAt": rfc3339(pf.started_at)}
    return None


def _fail(t: Tick, message: str, evidence: dict) -> None:
    """API.md: a preflight that fails while enforcement is on applies R1, then halts."""
    from . import rollback

    t.s.preflight = t.s.preflight.model_copy(update={"state": "Failed"})  # type: ignore[union-attr]
    if t.enforcing():
        rollback.roll_back(t, rollback.R1, Reason.PREFLIGHT_FAILED.value, message, evidence)
    t.halt(Reason.PREFLIGHT_FAILED, message, evidence)


def _passed(t: Tick, output: str, *, foreground: bool) -> None:
    s = t.s
    values = key_values(output)
    s.threshold = Threshold(
        configured_bps=_int(values.get("configured_bps")),
        recommended_bps=_int(values.get("recommended_bps")),
        effective_bps=_int(values.get("effective_bps")),
        mode=values.get("mode"),
    )
    pf = s.preflight = s.preflight.model_copy(update={"state": "Succeeded"})  # type: ignore[union-attr]
    lines = [line for line in output.splitlines() if "_bps=" in line or line.startswith("mode=") or "PASS" in line]
    t.transition("PreflightPassed", Progress.PREFLIGHT_PASSED, f"preflight Job {pf.job_name} passed",
                 {"logLines": lines[-20:]}, sets_reason=foreground)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
