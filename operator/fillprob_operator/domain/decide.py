"""decide(spec, status, observations, now) -> Decision: the next status and what to do.

Runbook 32 as a state machine (STYLE.md "Decide, then act"). Pure: no I/O, no clock, no
logging. The adapters persist `Decision.status` (first: the status is the intent) and then
execute `Decision.actions` in order; nothing to write when `changed` is False.

States (API.md): Pending -> Preflight -> Restarting -> Verifying -> Observing -> Passed ->
(next step's Restarting while targetPhase is higher). Any no-go -> the gate table's playbook
(RolledBack) or Halted. Suspended = change nothing, keep reporting.

Crash safety: every restart carries a token f"{generation}-{seq}" kept in status.restart.
The PatchEnv is (re-)issued only while the Deployment does not carry that token, a recorded
rollback is never re-applied, and a rollback request whose key is in history is ignored.
Calling decide again with the same inputs after its actions took effect gives no action and
an identical status. Adapters write the status *before* executing the actions; a Deployment
carrying a newer token than status (a lost status write) is never overwritten: decide holds
(StatusBehindDeployment) until a spec change re-arms from the Deployment's env.

Choices where API.md is silent:
- After a rollback `phase` is the rung whose env is effectively applied (ladder.phase_of_env):
  R1 -> Shadow, R2 -> the Canary/Expand rung with exactly that allowlist (a narrower set such
  as safeSymbols reads as Canary), R3 from AutoThreshold -> Full; `step` gets " (R2)" etc.
  The rollback restarts (new token), its pods get the post-restart checks (expectations from
  the env actually applied), then the rung is guarded with the table of that phase.
- Escalation: while RolledBack a no-go takes the more severe of the table's answer and
  escalate(last playbook) (R3 -> R2 -> R1); after R1 -> Halt. Simultaneous findings: a
  playbook beats Halt (stop the bleeding first), R1 > R2 > R3.
- R2 narrows: the last known-good set if it is a strict subset of the applied allowlist (any
  set when none is applied), else the rung below (Expand k -> k-1), else safeSymbols, else R1.
  lastKnownGoodSymbols is the allowlist of the last Passed rung that has one (Full/
  AutoThreshold have none), demoted to the rung below when that very set fails.
- Re-arm (a new generation while Halted/RolledBack): redo the effective rung, capped at
  targetPhase (restart, checks, full window), then climb. Halted in Phase 0 -> Pending.
- A new generation that changes the running step's env (minBps, its symbols) redoes the step;
  other spec changes keep the running window.
- Rollback requests apply in every state (a Halted rollout becomes RolledBack) except while
  Suspended (not applied, annotation left in place) and before the first step (recorded as
  RollbackSkipped). An alert without a `rollback` label gets the table's CB-trip answer.
- maxAutoThresholdDeltaBps refuses AutoThreshold: the rollout stays Passed at Full (guarded),
  Ready/Progressing False with reason UnexpectedThreshold saying what to change.
- Suspended: no actions; MetricsAvailable is still reported and the window keeps running
  (an outage still extends it); on resume every signal is evaluated before any promotion.
- Model/eval dir change while walking: preflight reruns (the step stays guarded), then the
  step is redone; a required dir removed is the "resolution skipped" row.
- A Passed step below targetPhase stands for one evaluation interval (prometheus.interval)
  before the next step starts, so `state: Passed` is seen in status for every step.
- An alert that started before the last rollback is covered by it (RollbackSkipped): the gates
  usually answer a CB trip before Alertmanager delivers the alert for that same trip.
- In Full/AutoThreshold (no allowlist) enforcedSymbols = spec symbols + symbols the new pods
  trade (grinder_router_orders_total); enforcedSymbolCount = len(enforcedSymbols).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from ..api import (
    AppliedEnv,
    FillProbRolloutSpec,
    HistoryEntry,
    LastRollback,
    Phase,
    Playbook,
    PreflightRun,
    Restart,
    RolloutStatus,
    State,
    Threshold,
)
from ..api import format_rfc3339 as _rfc3339
from .actions import Action, ClearRollbackAnnotation, EmitEvent, PatchEnv, RunPreflight
from .durations import format_duration
from .gates import (
    Baseline,
    Expectation,
    Finding,
    GateResult,
    Outcome,
    Signal,
    during_window,
    key_values,
    merge_evidence,
    metrics_missing,
    parse_resolution,
    post_restart,
)
from .ladder import (
    AUTO_THRESHOLD,
    ENFORCE,
    ENFORCE_SYMBOLS,
    EVAL_DIR,
    MIN_BPS,
    MODEL_DIR,
    REQUIRED_DIRS,
    EnvPatch,
    Step,
    applied_env_from,
    build_ladder,
    enforced_allowlist,
    index_at_or_below,
    index_of,
    phase_of_env,
    target_index,
)
from .observations import JobState, Observations, RollbackRequest
from .playbooks import HALT, Response, combine, playbook_patch, r2_symbols, response_to, while_rolled_back
from .reasons import Progress, Reason
from .status import (
    METRICS_AVAILABLE,
    append_history,
    request_seen,
    set_condition,
    state_conditions,
)

# The preflight Job fails itself at spec.preflight.timeout (activeDeadlineSeconds); this is
# how much longer the operator waits for it to say so before calling it failed.
PREFLIGHT_GRACE = timedelta(seconds=60)
_MAX_TRANSITIONS_PER_CALL = 16


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
) -> Decision:
    """The next status and actions for one FillProbRollout (see the module docstring)."""
    now = _utc_seconds(now)
    rollout = _Rollout(spec, status, observations, now, generation, name, namespace)
    rollout.reconcile()
    return rollout.decision()


def preflight_job_name(name: str, run: int) -> str:
    """`<name>-preflight-<run>`, kept within 63 characters (Job names become label values)."""
    suffix = f"-preflight-{run}"
    return name[: 63 - len(suffix)].rstrip("-.") + suffix


def restart_token(generation: int, seq: int) -> str:
    return f"{generation}-{seq}"


def _utc_seconds(value: datetime) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).replace(microsecond=0)


def starting_state_problems(env: dict[str, str | None], min_bps: int | None) -> list[str]:
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


@dataclass
class _Rollout:
    """One decide() call: a working copy of the status plus the actions collected so far."""

    spec: FillProbRolloutSpec
    original: RolloutStatus | None
    obs: Observations
    now: datetime
    generation: int
    name: str
    namespace: str
    s: RolloutStatus = field(init=False)
    ladder: tuple[Step, ...] = field(init=False)
    container: str | None = field(init=False, default=None)
    events: list[EmitEvent] = field(init=False, default_factory=list)
    requests_done: list[Action] = field(init=False, default_factory=list)
    blocker: tuple[str, str] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.s = self.original.model_copy(deep=True) if self.original else RolloutStatus()
        self.ladder = build_ladder(self.spec)

    # ------------------------------------------------------------------ the loop

    def reconcile(self) -> None:
        s = self.s
        new_generation = s.observed_generation is not None and s.observed_generation != self.generation
        if self.spec.suspend:
            s.observed_generation = self.generation
            self.suspend()
            return
        if s.state is State.SUSPENDED:
            self.resume()
        if not self.find_deployment():
            return  # observedGeneration stays: the new generation is acted on once it can be
        if self.deployment_ahead():
            if not new_generation:
                return
            self.adopt_deployment()
        s.observed_generation = self.generation
        if new_generation:
            self.replan()
        self.rollback_requests()
        if s.state is State.HALTED:
            return
        self.check_model_change()
        handlers = {
            State.PENDING: self.pending,
            State.PREFLIGHT: self.preflight,
            State.RESTARTING: self.restarting,
            State.VERIFYING: self.verifying,
            State.OBSERVING: self.observing,
            State.PASSED: self.passed,
            State.ROLLED_BACK: self.rolled_back,
        }
        for _ in range(_MAX_TRANSITIONS_PER_CALL):
            before = (s.state, s.phase, s.batch, s.restart.seq if s.restart else 0)
            handler = handlers.get(s.state)
            if handler is None:
                return
            handler()
            if before == (s.state, s.phase, s.batch, s.restart.seq if s.restart else 0):
                return

    def find_deployment(self) -> bool:
        deployment = self.obs.deployment
        wanted = self.spec.container_name
        if not deployment.exists:
            self.blocker = (Progress.DEPLOYMENT_NOT_FOUND.value,
                            f"Deployment {self.namespace}/{self.spec.deployment_name} not found")
            return False
        names = deployment.container_names
        if wanted is None:
            self.container = names[0] if names else None
        else:
            self.container = wanted if (wanted in names or not names) else None
        if self.container is None:
            self.blocker = (Progress.CONTAINER_NOT_FOUND.value,
                            f"container {wanted!r} not in Deployment {self.spec.deployment_name} "
                            f"(containers: {', '.join(names) or 'none'}): fix spec.containerName")
            return False
        return True

    def deployment_ahead(self) -> bool:
        """The Deployment carries a newer restart token than status: a status write was lost
        after its PatchEnv ran (adapters must write status first). Re-issuing ours would undo
        that patch, so hold and say so."""
        ours = self.s.restart.seq if self.s.restart else 0
        theirs = _token_seq(self.obs.deployment.restart_token)
        if theirs is None or theirs <= ours:
            return False
        self.blocker = (Progress.STATUS_BEHIND.value,
                        f"the Deployment carries restart token {self.obs.deployment.restart_token}, newer than "
                        f"status ({self.s.restart.token if self.s.restart else 'none'}): holding; check the "
                        "Deployment's env and re-arm with a spec change")
        return True

    def adopt_deployment(self) -> None:
        """Re-arming after a lost status write: take the Deployment's env and token as they
        are (as if Halted there), so the re-armed step's token is newer than the Deployment's."""
        s, d = self.s, self.obs.deployment
        s.applied_env = applied_env_from(d.env)
        s.restart = Restart(seq=_token_seq(d.restart_token) or 0, token=d.restart_token or "", issued_at=self.now)
        s.phase, s.batch, s.step = phase_of_env(s.applied_env, self.ladder, tuple(self.spec.safe_symbols))
        s.state, self.blocker = State.HALTED, None

    # ------------------------------------------------------------------ transitions

    def transition(
        self,
        action: str,
        reason: str,
        message: str,
        evidence: dict[str, Any] | None = None,
        *,
        warning: bool = False,
        sets_reason: bool = True,
    ) -> None:
        """Record a transition: history entry + Event (+ the state's reason/message)."""
        s = self.s
        reason = getattr(reason, "value", reason)
        entry = HistoryEntry(at=self.now, phase=s.phase.value, step=s.step, action=action, reason=reason,
                             evidence=_jsonable(evidence or {}))
        s.history = append_history(s.history, entry)
        if sets_reason:
            s.reason, s.message = reason, message
        self.events.append(EmitEvent("Warning" if warning else "Normal", reason, f"{s.step}: {message}"))

    def halt(self, reason: str, message: str, evidence: dict[str, Any] | None = None) -> None:
        """Halted: stop, change nothing more, say why (until a spec change)."""
        self.s.state = State.HALTED
        self.transition("Halted", reason, message, evidence, warning=True)

    # ------------------------------------------------------------------ Phase 0

    def pending(self) -> None:
        s, env = self.s, dict(self.obs.deployment.env)
        if unset := _unset_dirs(env):
            self.halt(Reason.MODEL_DIR_UNSET,
                      f"set {', '.join(unset)} on container {self.container} (runbook 32 Phase 0.1)",
                      {"unset": unset})
            return
        if s.restart is None:
            problems = starting_state_problems(env, self.spec.min_bps)
            if problems:
                self.halt(Reason.STARTING_STATE_INVALID,
                          "the container is not in runbook 32's starting state (0.3): " + "; ".join(problems)
                          + "; nothing was changed",
                          {"env": {k: env.get(k) for k in (ENFORCE, AUTO_THRESHOLD, ENFORCE_SYMBOLS, MIN_BPS)}})
                return
            s.applied_env = applied_env_from(env)
        self.start_preflight(Progress.PREFLIGHT_STARTED)

    def start_preflight(self, reason: Progress) -> None:
        s, env = self.s, self.obs.deployment.env
        run = (s.preflight.run + 1) if s.preflight else 1
        dirs = {"model_dir": env.get(MODEL_DIR), "eval_dir": env.get(EVAL_DIR)}
        dirs_evidence = {"modelDir": dirs["model_dir"], "evalDir": dirs["eval_dir"]}
        if not self.spec.preflight.enabled:
            s.preflight = PreflightRun(run=run, state="Skipped", started_at=self.now, **dirs)
            s.threshold = (s.threshold or Threshold()).model_copy(update={"recommended_bps": None})
            self.transition("PreflightSkipped", Progress.PREFLIGHT_SKIPPED, "preflight.enabled is false")
            self.after_preflight()
            return
        if s.threshold is not None:  # a new model/eval may recommend a new value: not a jump
            s.threshold = s.threshold.model_copy(update={"recommended_bps": None})
        job = preflight_job_name(self.name, run)
        s.preflight = PreflightRun(run=run, job_name=job, state="Running", started_at=self.now, **dirs)
        s.state = State.PREFLIGHT
        why = "model/eval dir changed: " if reason is Progress.MODEL_CHANGED else ""
        self.transition("PreflightStarted", reason, f"{why}preflight Job {job} started (runbook 32 Phase 0.2)",
                        {"job": job, **dirs_evidence})

    def preflight(self) -> None:
        if self.s.restart is not None and self.s.restart.verified:
            self.guard()  # a rerun (model/eval changed): the running step is still watched
            if self.s.state is not State.PREFLIGHT:
                return
        pf = self.s.preflight
        if pf is None:
            self.start_preflight(Progress.PREFLIGHT_STARTED)
            return
        seen = self.obs.preflight if self.obs.preflight and self.obs.preflight.job_name == pf.job_name else None
        if seen is not None and seen.state is JobState.SUCCEEDED:
            self.preflight_passed(seen.output)
        elif seen is not None and seen.state is JobState.FAILED:
            fails = [line for line in seen.output.splitlines() if "FAIL" in line][:20]
            self.halt(Reason.PREFLIGHT_FAILED,
                      f"preflight Job {pf.job_name} failed (exit code {seen.exit_code}): "
                      + ("; ".join(fails[:3]) or "see the Job's log"),
                      {"job": pf.job_name, "exitCode": seen.exit_code,
                       "logLines": fails or seen.output.splitlines()[-20:]})
        elif pf.started_at and self.now > pf.started_at + self.spec.preflight.timeout + PREFLIGHT_GRACE:
            self.halt(Reason.PREFLIGHT_FAILED,
                      f"preflight Job {pf.job_name} did not finish within preflight.timeout "
                      f"{format_duration(self.spec.preflight.timeout)}",
                      {"job": pf.job_name, "startedAt": _rfc3339(pf.started_at)})

    def preflight_passed(self, output: str) -> None:
        s = self.s
        values = key_values(output)
        s.threshold = Threshold(
            configured_bps=_int(values.get("configured_bps")),
            recommended_bps=_int(values.get("recommended_bps")),
            effective_bps=_int(values.get("effective_bps")),
            mode=values.get("mode"),
        )
        pf = s.preflight = s.preflight.model_copy(update={"state": "Succeeded"})  # type: ignore[union-attr]
        lines = [line for line in output.splitlines() if "_bps=" in line or line.startswith("mode=") or "PASS" in line]
        self.transition("PreflightPassed", Progress.PREFLIGHT_PASSED, f"preflight Job {pf.job_name} passed",
                        {"logLines": lines[-20:]})
        self.after_preflight()

    def after_preflight(self) -> None:
        """First preflight: Shadow. A rerun (model/eval changed): redo the current step."""
        s = self.s
        if s.restart is None:
            self.start_step(0, Progress.STEP_STARTED)
            return
        current = index_at_or_below(self.ladder, s.phase, s.batch)
        self.start_step(max(0, min(current, self.target())), Progress.MODEL_CHANGED)

    def check_model_change(self) -> None:
        """Preflight reruns when the model or eval dir values change (API.md, Phase 0)."""
        s, env = self.s, self.obs.deployment.env
        if s.state not in (State.RESTARTING, State.VERIFYING, State.OBSERVING, State.PASSED) or s.preflight is None:
            return
        if (env.get(MODEL_DIR), env.get(EVAL_DIR)) == (s.preflight.model_dir, s.preflight.eval_dir):
            return
        if unset := _unset_dirs(env):
            self.no_go([Finding(Signal.RESOLUTION_FAILED, Reason.MODEL_DIR_UNSET,
                                f"{', '.join(unset)} removed from container {self.container}", {"unset": unset})])
            return
        self.start_preflight(Progress.MODEL_CHANGED)

    # ------------------------------------------------------------------ the ladder

    def target(self) -> int:
        return target_index(self.ladder, self.spec.target_phase)

    def current(self) -> int | None:
        return index_of(self.ladder, self.s.phase, self.s.batch)

    def start_step(self, index: int, reason: Progress) -> None:
        """Patch the step's env (and the restart token): the Deployment restarts."""
        s, step = self.s, self.ladder[index]
        patch, token = self.issue_restart(step.env(self.spec.min_bps))
        s.phase, s.batch, s.step = step.phase, step.batch, step.label
        s.enforced_symbols = list(step.allowlist) if step.allowlist else self.all_symbols(step.enforces)
        s.state = State.RESTARTING
        s.observation_started_at = s.observation_ends_at = None
        self.transition("RestartIssued", reason, f"env patched ({_describe(patch)}), restarting (token {token})",
                        {"setEnv": dict(patch.set_env), "removeEnv": list(patch.remove_env), "restartToken": token})

    def issue_restart(self, patch: EnvPatch) -> tuple[EnvPatch, str]:
        """A new restart token; a previous patch the Deployment never got is folded in."""
        s, previous = self.s, self.s.restart
        if previous is not None and self.obs.deployment.restart_token != previous.token:
            patch = EnvPatch(previous.set_env, tuple(previous.remove_env)).then(patch)
        seq = (previous.seq if previous else 0) + 1
        s.restart = Restart(seq=seq, token=restart_token(self.generation, seq), issued_at=self.now,
                            set_env=dict(patch.set_env), remove_env=list(patch.remove_env))
        s.applied_env = patch.apply_to(s.applied_env or AppliedEnv())
        return patch, s.restart.token

    def all_symbols(self, enforcing: bool) -> list[str]:
        """No allowlist: every symbol is enforced (those the spec names and the pods trade)."""
        if not enforcing:
            return []
        known = set(self.spec.canary_symbols) | {x for b in self.spec.expand_batches for x in b}
        if self.obs.metrics.available:
            for pod in self.obs.deployment.new_pods:
                sample = self.obs.metrics.pods.get(pod.pod)
                if sample is not None:
                    known |= set(sample.orders_by_symbol)
        return sorted(known)

    def our_pods(self) -> bool:
        """The newest ReplicaSet carries our latest restart token (else: not ours to judge)."""
        return self.s.restart is not None and self.obs.deployment.restart_token == self.s.restart.token

    def rolled_out(self) -> bool:
        d = self.obs.deployment
        return self.our_pods() and d.rollout_complete and d.observed_generation >= d.generation

    def restart_overdue(self) -> bool:
        return self.now - self.s.restart.issued_at > self.spec.progress_deadline  # type: ignore[union-attr]

    def restart_timed_out(self, why: str) -> None:
        d, token = self.obs.deployment, self.s.restart.token  # type: ignore[union-attr]
        self.no_go([Finding(Signal.RESTART_TIMED_OUT, Reason.RESTART_TIMED_OUT,
                            f"restart {token} not done within progressDeadline "
                            f"{format_duration(self.spec.progress_deadline)}: {why}",
                            {"rolloutMessage": d.rollout_message, "restartToken": token})])

    def restarting(self) -> None:
        if self.rolled_out():
            self.s.state = State.VERIFYING
            self.transition("RolloutComplete", Progress.ROLLOUT_COMPLETE,
                            self.obs.deployment.rollout_message or "rollout complete; verifying the new pods")
        elif self.restart_overdue():
            self.restart_timed_out(self.obs.deployment.rollout_message or "rollout not complete")

    def verify(self) -> GateResult | None:
        """Post-restart checks; PASS/NO_GO returned, WAIT/NO_DATA handled (None)."""
        if not self.rolled_out():
            if self.restart_overdue():
                self.restart_timed_out(self.obs.deployment.rollout_message or "rollout not complete")
            return None
        result = post_restart(self.obs.deployment.new_pods, self.obs.metrics, self.expectation(), self.baseline())
        if result.outcome is Outcome.WAIT:
            if self.restart_overdue():
                self.restart_timed_out(result.message)
            return None
        if result.outcome is not Outcome.NO_GO:
            self.track_metrics(result)
        return None if result.outcome is Outcome.NO_DATA else result

    def verifying(self) -> None:
        result = self.verify()
        if result is None:
            return
        if result.outcome is Outcome.NO_GO:
            self.no_go(list(result.findings))
            return
        self.verified()
        self.start_observation()

    def verified(self) -> None:
        """Post-restart checks held: note the thresholds the new pods logged."""
        s = self.s
        s.restart = s.restart.model_copy(update={"verified": True})  # type: ignore[union-attr]
        for pod in self.obs.deployment.new_pods:
            r = parse_resolution(pod.resolution_line or "")
            if r.kind == "ok":
                s.threshold = Threshold(configured_bps=r.configured_bps, recommended_bps=r.recommended_bps,
                                        effective_bps=r.effective_bps, mode=r.mode)
                break

    def start_observation(self) -> None:
        s = self.s
        window = self.spec.observation_window(s.phase)
        s.observation_started_at, s.observation_ends_at = self.now, self.now + window
        s.state = State.OBSERVING
        pods = self.obs.deployment.new_pods
        self.transition("ObservationStarted", Progress.POST_RESTART_CHECKS_PASSED,
                        f"post-restart checks passed on {len(pods)} new pod(s); observing for at least "
                        f"{format_duration(window)}, until {_rfc3339(s.observation_ends_at)}",
                        {"logLines": [f"{p.pod}: {p.resolution_line}" for p in pods], **self.gauges()})

    def observing(self) -> None:
        result = self.guard()
        if result is None:
            return
        if self.now >= self.s.observation_ends_at:  # type: ignore[operator]
            self.step_passed()

    def step_passed(self) -> None:
        s = self.s
        step = self.ladder[self.current()] if self.current() is not None else None  # type: ignore[index]
        s.state = State.PASSED
        if step is not None and step.allowlist:
            s.last_known_good_symbols = list(step.allowlist)
        self.transition("StepPassed", Reason.OBSERVATION_PASSED,
                        f"passed: observed from {_rfc3339(s.observation_started_at)} to "  # type: ignore[arg-type]
                        f"{_rfc3339(self.now)} with no no-go signal", self.gauges())

    def passed(self) -> None:
        if self.guard() is None:
            return
        current, target = self.current(), self.target()
        if current is None or current >= target:
            return
        ends = self.s.observation_ends_at
        if ends is not None and self.now < ends + self.spec.prometheus.interval:
            return  # Passed stands for one evaluation interval: seen in status, then the next step
        if self.ladder[current + 1].phase is Phase.AUTO_THRESHOLD and self.refuse_auto_threshold():
            return
        self.start_step(current + 1, Progress.STEP_STARTED)

    def refuse_auto_threshold(self) -> bool:
        """gates.maxAutoThresholdDeltaBps: runbook 32 5.1, recommended vs configured."""
        limit = self.spec.gates.max_auto_threshold_delta_bps
        if limit is None:
            return False
        t = self.s.threshold or Threshold()
        if t.recommended_bps is not None and t.configured_bps is not None:
            delta = abs(t.recommended_bps - t.configured_bps)
            if delta <= limit:
                return False
            why = (f"not entering AutoThreshold: |recommended {t.recommended_bps} - configured {t.configured_bps}| "
                   f"= {delta} bps exceeds gates.maxAutoThresholdDeltaBps {limit}; accept the recommendation "
                   "(spec.minBps) or raise the limit")
        else:
            why = "not entering AutoThreshold: recommended/configured threshold unknown (no resolution line yet)"
        if self.s.reason != Reason.UNEXPECTED_THRESHOLD.value or self.s.message != why:
            self.transition("AutoThresholdRefused", Reason.UNEXPECTED_THRESHOLD, why,
                            {"threshold": t.model_dump(by_alias=True, exclude_none=True), "maxDeltaBps": limit},
                            warning=True)
        return True

    # ------------------------------------------------------------------ guarding

    def expectation(self) -> Expectation:
        return Expectation.from_env(self.s.applied_env or AppliedEnv())

    def baseline(self) -> Baseline:
        """The recommended threshold counts only for the model/eval dirs it was seen with."""
        s, env = self.s, self.obs.deployment.env
        same_model = s.preflight is not None and (env.get(MODEL_DIR), env.get(EVAL_DIR)) == (
            s.preflight.model_dir, s.preflight.eval_dir)
        recommended = s.threshold.recommended_bps if (s.threshold and same_model) else None
        r = self.spec.gates.threshold_range
        return Baseline(recommended, (r.min_bps, r.max_bps) if r else None)

    def guard(self) -> GateResult | None:
        """Window gates on our pods. Returns the result when the step may move on (PASS)."""
        if not self.our_pods():
            return None
        result = during_window(self.obs.deployment.new_pods, self.obs.metrics, self.expectation(),
                               self.baseline(), self.spec.gates)
        if result.outcome is Outcome.NO_GO:
            self.no_go(list(result.findings))
            return None
        self.track_metrics(result)
        return result if result.outcome is Outcome.PASS else None

    def track_metrics(self, result: GateResult) -> None:
        self.track_metrics_missing(result.message if result.outcome is Outcome.NO_DATA else "")

    def track_metrics_missing(self, missing: str) -> None:
        """MetricsAvailable; while it is False the window does not count (it is extended)."""
        s = self.s
        available = not missing
        old = s.condition(METRICS_AVAILABLE)
        was_available = old is None or old.status != "False"
        if available and old is not None and old.status == "True":
            return
        if not available and not was_available:
            return
        if available:
            message = "the new pods' metrics are in Prometheus"
            observing = State.OBSERVING in (s.state, s.resume_state if s.state is State.SUSPENDED else None)
            if old is not None and observing and s.observation_ends_at and s.observation_started_at:
                outage = self.now - max(old.last_transition_time, s.observation_started_at)
                if outage > timedelta(0):
                    s.observation_ends_at = s.observation_ends_at + outage
                    message += (f"; window extended by {format_duration(outage)} to "
                                f"{_rfc3339(s.observation_ends_at)}")
            s.conditions = set_condition(s.conditions, METRICS_AVAILABLE, True, Progress.METRICS_RECEIVED.value,
                                         message, self.now, self.generation)
            if old is not None and old.status == "False":
                self.transition("MetricsAvailable", Progress.METRICS_RECEIVED, message, sets_reason=False)
            return
        message = f"{missing}: holding (missing data is neither go nor no-go)"
        s.conditions = set_condition(s.conditions, METRICS_AVAILABLE, False, Reason.METRICS_UNAVAILABLE.value,
                                     message, self.now, self.generation)
        self.transition("MetricsUnavailable", Reason.METRICS_UNAVAILABLE, message,
                        {"why": missing}, warning=True, sets_reason=False)

    def gauges(self) -> dict[str, Any]:
        """Evidence: the new pods' gauges and counters as Prometheus reported them."""
        m = self.obs.metrics
        if not m.available:
            return {}
        pods = [m.pods[p.pod] for p in self.obs.deployment.new_pods if p.pod in m.pods]
        return {
            "cbTrips": {p.pod: p.circuit_breaker_trips for p in pods},
            "enforceEnabled": {p.pod: p.enforce_enabled for p in pods},
            "autoThresholdBps": {p.pod: p.auto_threshold_bps for p in pods},
            "blocks": {p.pod: sum(p.blocks_by_symbol.values()) for p in pods},
        }

    # ------------------------------------------------------------------ no-go

    def no_go(self, findings: list[Finding]) -> None:
        """API.md's gate table for the applied phase; escalated while already rolled back."""
        s = self.s
        answers = [response_to(f.signal, s.phase) for f in findings]
        response = combine(answers)
        if s.state is State.ROLLED_BACK and s.last_rollback is not None:
            response = while_rolled_back(response, s.last_rollback.playbook)
        if response is None:
            return
        decisive = next((f for f, a in zip(findings, answers) if a == response), findings[0])
        evidence = merge_evidence(f.evidence for f in findings)
        evidence["signals"] = [f.reason.value for f in findings]
        message = "; ".join(dict.fromkeys(f.message for f in findings))
        if response == HALT:
            self.halt(decisive.reason, message, evidence)
        else:
            self.roll_back(response, decisive.reason.value, message, evidence)  # type: ignore[arg-type]

    def roll_back(self, playbook: Playbook, reason: str, message: str, evidence: dict[str, Any]) -> None:
        """Apply R1/R2/R3 (runbook 32, Rollback Playbook) and restart; then keep guarding."""
        s = self.s
        requested, symbols = playbook, ()
        in_trouble = enforced_allowlist(s.applied_env or AppliedEnv())
        if in_trouble and set(in_trouble) == set(s.last_known_good_symbols):
            s.last_known_good_symbols = list(self.allowlist_below())  # it passed, but it is what failed now
        if playbook is Playbook.R2:
            symbols = r2_symbols(tuple(s.last_known_good_symbols), in_trouble, self.allowlist_below(),
                                 tuple(self.spec.safe_symbols))
            if not symbols:
                playbook = Playbook.R1
        patch, token = self.issue_restart(playbook_patch(playbook, symbols))
        env = s.applied_env or AppliedEnv()
        phase, batch, label = phase_of_env(env, self.ladder, tuple(self.spec.safe_symbols))
        s.phase, s.batch, s.step = phase, batch, f"{label} ({playbook.value})"
        allowlist = enforced_allowlist(env)
        s.enforced_symbols = list(allowlist) if allowlist else self.all_symbols(env.enforce == "1")
        s.state = State.ROLLED_BACK
        s.observation_started_at = s.observation_ends_at = None
        evidence = {**evidence, "playbook": playbook.value, "setEnv": dict(patch.set_env), "restartToken": token}
        if requested is not playbook:
            evidence["requested"] = requested.value
            message += f" (R2 had no narrower known-good set: {playbook.value})"
        s.last_rollback = LastRollback(playbook=playbook, reason=reason, at=self.now, evidence=_jsonable(evidence))
        self.transition(f"Rollback{playbook.value}", reason, f"{playbook.value} applied: {message}", evidence,
                        warning=True)

    def allowlist_below(self) -> tuple[str, ...]:
        """The allowlist of the highest rung below the applied one that has one (Expand k -> k-1)."""
        here = index_at_or_below(self.ladder, self.s.phase, self.s.batch)
        for step in reversed(self.ladder[: max(here, 0)]):
            if step.allowlist:
                return step.allowlist
        return ()

    def rolled_back(self) -> None:
        """A rollback restarts too: verify its pods, then keep guarding (never climb)."""
        s = self.s
        if s.restart is not None and not s.restart.verified:
            result = self.verify()
            if result is None:
                return
            if result.outcome is Outcome.NO_GO:
                self.no_go(list(result.findings))
                return
            self.verified()
            playbook = s.last_rollback.playbook.value if s.last_rollback else "the rollback"
            self.transition("RollbackVerified", Progress.POST_RESTART_CHECKS_PASSED,
                            f"post-restart checks passed after {playbook}; guarding", self.gauges(), sets_reason=False)
            return
        self.guard()

    # ------------------------------------------------------------------ outside requests

    def rollback_requests(self) -> None:
        """`grinder.io/rollback` annotations and Alertmanager alerts, each applied once."""
        for request in self.obs.rollback_requests:
            manual = request.reason == Reason.MANUAL_ROLLBACK.value
            if manual and not any(isinstance(a, ClearRollbackAnnotation) for a in self.requests_done):
                self.requests_done.append(ClearRollbackAnnotation())
            if request_seen(self.s, request.key):
                continue
            self.apply_request(request, Reason.MANUAL_ROLLBACK if manual else Reason.ALERT_FIRED)

    def apply_request(self, request: RollbackRequest, reason: Reason) -> None:
        s = self.s
        evidence = {**dict(request.evidence), "requestKey": request.key, "source": request.source}
        if request.playbook not in ("", *(p.value for p in Playbook)):
            self.transition("RollbackRejected", Progress.ROLLBACK_REQUEST_INVALID,
                            f"{reason.value} asked for {request.playbook!r}: use R1, R2 or R3", evidence,
                            warning=True, sets_reason=False)
            return
        if s.restart is None:
            self.transition("RollbackSkipped", Progress.ROLLBACK_SKIPPED,
                            f"{reason.value} ({request.source}): nothing applied yet, nothing to roll back",
                            evidence, sets_reason=False)
            return
        if reason is Reason.ALERT_FIRED and self.alert_already_answered(request):
            self.transition("RollbackSkipped", Progress.ROLLBACK_SKIPPED,
                            f"{request.source}: the alert started before the last rollback "
                            f"({s.last_rollback.playbook.value} at {_rfc3339(s.last_rollback.at)}), "
                            "which already answered it", evidence, sets_reason=False)
            return
        response: Response | None
        if request.playbook:
            response = Playbook(request.playbook)
        else:  # an alert without a `rollback` label: the table's playbook for a CB trip
            response = response_to(Signal.CIRCUIT_BREAKER_TRIP, s.phase)
            if s.state is State.ROLLED_BACK and s.last_rollback is not None:
                response = while_rolled_back(response, s.last_rollback.playbook)
        message = f"{request.source}"
        if response == HALT or response is None:
            self.halt(reason, f"{message}: the gate table says Halt for a CB trip at {s.step}", evidence)
        else:
            self.roll_back(response, reason.value, message, evidence)  # type: ignore[arg-type]

    def alert_already_answered(self, request: RollbackRequest) -> bool:
        """An alert that started before the last rollback reports what that rollback answered.

        The gates usually see a circuit-breaker trip before Alertmanager delivers its alert;
        escalating again for the same trip would be a second rollback for one signal.
        """
        s = self.s
        if s.state is not State.ROLLED_BACK or s.last_rollback is None:
            return False
        try:
            started = datetime.fromisoformat(str(request.evidence.get("startsAt", "")).replace("Z", "+00:00"))
        except ValueError:
            return False
        if started.tzinfo is None:
            started = started.replace(tzinfo=timezone.utc)
        return started < s.last_rollback.at + timedelta(seconds=1)  # `at` is whole seconds

    # ------------------------------------------------------------------ spec changes, suspend

    def replan(self) -> None:
        """A new generation: re-arm Halted/RolledBack; a lower target or a changed step now."""
        s, target = self.s, self.target()
        if s.restart is None:
            if s.state is State.HALTED:
                s.state = State.PENDING
                self.transition("Rearmed", Progress.REARMED, "spec changed: starting over from Phase 0")
            return
        current = max(0, index_at_or_below(self.ladder, s.phase, s.batch))
        if s.state in (State.HALTED, State.ROLLED_BACK):
            self.rearm(min(current, target))
        elif s.state is State.PREFLIGHT:
            return  # after_preflight() starts the right step
        elif target < current:
            self.start_step(target, Progress.TARGET_LOWERED)
        elif self.step_env_changed():
            self.start_step(current, Progress.STEP_CHANGED)

    def rearm(self, index: int) -> None:
        s, env = self.s, self.obs.deployment.env
        s.phase, s.batch = self.ladder[index].phase, self.ladder[index].batch
        if s.preflight and (env.get(MODEL_DIR), env.get(EVAL_DIR)) != (s.preflight.model_dir, s.preflight.eval_dir):
            self.start_preflight(Progress.MODEL_CHANGED)
        else:
            self.start_step(index, Progress.REARMED)

    def step_env_changed(self) -> bool:
        """The applied step's env in the new spec differs from what is applied (e.g. minBps)."""
        s, exact = self.s, self.current()
        if exact is None:
            return True
        applied = s.applied_env or AppliedEnv()
        return self.ladder[exact].env(self.spec.min_bps).apply_to(applied) != applied

    def suspend(self) -> None:
        s = self.s
        if s.state is not State.SUSPENDED:
            s.resume_state, s.state = s.state, State.SUSPENDED
            self.transition("Suspended", Progress.SUSPENDED, "spec.suspend is true: changing nothing, still reporting")
        watched = s.resume_state in (State.OBSERVING, State.PASSED, State.ROLLED_BACK)
        if self.obs.deployment.exists and watched and self.our_pods():
            pods = self.obs.deployment.new_pods  # report only; acting waits for the resume
            missing = metrics_missing(pods, self.obs.metrics, self.expectation()) if pods else "no new pods"
            self.track_metrics_missing(missing)

    def resume(self) -> None:
        s = self.s
        s.state, s.resume_state = s.resume_state or State.PENDING, None
        self.transition("Resumed", Progress.RESUMED, "spec.suspend cleared: resuming")

    # ------------------------------------------------------------------ the result

    def decision(self) -> Decision:
        s = self.s
        self.count_enforced_symbols()
        self.sync_conditions()
        actions: list[Action] = [*self.patch_env(), *self.requests_done, *self.run_preflight(), *self.events]
        if self.original is not None and s == self.original:
            return Decision(self.original, tuple(actions), False)
        return Decision(s, tuple(actions), True)

    def count_enforced_symbols(self) -> None:
        """No allowlist (Full, AutoThreshold): every symbol traded counts; the list only grows."""
        s, env = self.s, self.s.applied_env
        watched = s.state in (State.PASSED, State.OBSERVING, State.ROLLED_BACK)
        if watched and env is not None and env.enforce == "1" and not enforced_allowlist(env):
            s.enforced_symbols = sorted(set(s.enforced_symbols) | set(self.all_symbols(True)))
        s.enforced_symbol_count = len(s.enforced_symbols)

    def patch_env(self) -> list[PatchEnv]:
        """(Re-)issue the restart until the Deployment carries its token."""
        s = self.s
        if s.restart is None or s.state in (State.SUSPENDED, State.HALTED) or self.our_pods() or self.blocker:
            return []
        return [PatchEnv(self.container or "", dict(s.restart.set_env), tuple(s.restart.remove_env), s.restart.token)]

    def run_preflight(self) -> list[RunPreflight]:
        """Create the preflight Job while it does not exist (the adapter creates if absent)."""
        s, seen = self.s, self.obs.preflight
        pf = s.preflight
        if s.state is not State.PREFLIGHT or pf is None or pf.state != "Running" or not pf.job_name or self.blocker:
            return []
        if seen is not None and seen.job_name == pf.job_name and seen.state is not JobState.ABSENT:
            return []
        timeout = int(self.spec.preflight.timeout.total_seconds())
        return [RunPreflight(pf.job_name, self.container or "", tuple(self.spec.preflight.command), timeout)]

    def sync_conditions(self) -> None:
        s = self.s
        current = self.current()
        at_target = current is not None and current == self.target()
        values = state_conditions(s, at_target)
        if self.blocker is not None:
            reason, message = self.blocker
            old = s.condition("Ready")
            if old is None or old.reason != reason:
                self.events.append(EmitEvent("Warning", reason, message))
            values["Ready"] = (False, reason, message)
            values["Progressing"] = (False, reason, message)
        for type_, (value, reason, message) in values.items():
            s.conditions = set_condition(s.conditions, type_, value, reason, message, self.now, self.generation)
        if s.condition(METRICS_AVAILABLE) is None:
            s.conditions = set_condition(s.conditions, METRICS_AVAILABLE, None, Progress.NOT_OBSERVED_YET.value,
                                         "no new pods observed yet", self.now, self.generation)
        s.conditions = [c.model_copy(update={"observed_generation": self.generation}) for c in s.conditions]


def _unset_dirs(env: Mapping[str, str | None]) -> list[str]:
    """Phase 0.1's dirs that are not set (a valueFrom entry, None here, counts as set)."""
    return [k for k in REQUIRED_DIRS if not env.get(k) and not (k in env and env[k] is None)]


def _token_seq(token: str | None) -> int | None:
    """`"3-7"` -> 7 (see restart_token); None for a missing or foreign token."""
    try:
        return int((token or "").rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _describe(patch: EnvPatch) -> str:
    parts = [f"{k}={v}" for k, v in patch.set_env.items()] + [f"{k} removed" for k in patch.remove_env]
    return ", ".join(parts) or "no env change"


def _jsonable(value: Any) -> Any:
    """Evidence as plain JSON: floats that are whole become ints, tuples become lists."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, datetime):
        return _rfc3339(value)
    if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):
        return value.value
    return value
