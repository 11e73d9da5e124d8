"""Execute a Decision: ONE status patch, then its actions in order.

The executor decides nothing. The status is the intent and is written first (skipped when
unchanged); then the actions run. If the status write fails, nothing is done; if an action
fails, the next tick sees the written intent and `decide()` asks for the action again
(it is level-based: a PatchEnv while the Deployment lacks the restart token, a RunPreflight
while the Job is absent), and every action is idempotent (restart token, Job name,
annotation test). It also counts the rollbacks the new status records and times detection.

A status the API server refuses (it answered 4xx: invalid, too large) must not block a
rollback. The write is retried with the history trimmed, newest entries kept (a status grown
too large); if that is written, the decision runs as usual. If it is still refused, only what
narrows the Deployment's env runs: the PatchEnv of a new rollback, or one that enforces strictly
less than the Deployment does now (domain/scope.py), never one that widens. A climb, a preflight
Job, removing a request annotation wait for a status that records them. The next tick sees the
Deployment carrying a newer restart token than status and holds (StatusBehindDeployment, in
decide), so nothing is applied twice. An unanswered write (unreachable, timed out), a 5xx, 408
or 429 keeps the status-first rule: nothing runs (that order is what makes a crash safe).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from ..domain.actions import ClearRollbackAnnotation, EmitEvent, PatchEnv, RunPreflight
from ..domain.ladder import EnvPatch, applied_env_from
from ..domain.observations import Observations
from ..domain.scope import narrower, within
from ..domain.status import HISTORY_LIMIT, merge_patch
from .clock import Clock
from .kubernetes import KubernetesError

logger = logging.getLogger("fillprob_operator.executor")

# Rollbacks asked for from outside the gates: no Prometheus sample to time them from.
EXTERNAL_REASONS = frozenset({"ManualRollback", "AlertFired"})
STATUS_REFUSED = "StatusRefused"
# 4xx answers that are no verdict on the status itself: try again later, as for a 5xx.
_NOT_REFUSALS = frozenset({408, 429})


@dataclass(frozen=True)
class ExecutionContext:
    namespace: str
    name: str
    body: Mapping[str, Any]  # the FillProbRollout as read this tick (owner of Job and Events)
    deployment_name: str
    previous_status: Mapping[str, Any]
    observations: Observations | None = None
    rollback_annotation: str | None = None
    rollback_reason_annotation: bool = False
    # When this process last had the gates look at this rollout's Prometheus data and find
    # no no-go (None: unknown, e.g. after a restart). A no-go seen now became visible after it.
    clean_look_at: datetime | None = None


@dataclass
class ExecutionResult:
    # The status as stored now: the decision's, the decision's with its history trimmed, or
    # (refused) the previous one.
    status: dict[str, Any]
    status_patched: bool = False
    env_patched_at: datetime | None = None
    rollback: Mapping[str, Any] | None = None
    events: list[EmitEvent] = field(default_factory=list)
    # Why the API server refused every status write (None: written, or nothing to write).
    status_refused: str | None = None
    history_dropped: int = 0


def dump_status(status: Any) -> dict[str, Any]:
    if isinstance(status, Mapping):
        return dict(status)
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def new_rollback(previous: Mapping[str, Any], current: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The `lastRollback` this decision recorded, if it is a new one."""
    last = current.get("lastRollback")
    return last if last and last != previous.get("lastRollback") else None


def refused_by_api_server(exc: KubernetesError) -> bool:
    """The API server answered, and said no to this status (4xx but 408/429)."""
    status = getattr(exc, "status", None)
    return status is not None and 400 <= status < 500 and status not in _NOT_REFUSALS


def history_trims(length: int) -> list[int]:
    """How many of the newest history entries each retry keeps: at most HISTORY_LIMIT, then
    halving down to none; only counts below `length` (the full history was refused)."""
    keep = min(length, HISTORY_LIMIT)
    if keep == length:
        keep //= 2
    trims = []
    while length > 0:
        trims.append(keep)
        if keep == 0:
            break
        keep //= 2
    return trims


def narrows(action: PatchEnv, env: Mapping[str, str | None], rollback: bool) -> bool:
    """The patch leaves the Deployment's env enforcing no more than now: strictly less, or as
    much when it is the restart of a new rollback (a rollback folded onto a climb the Deployment
    never got restarts pods, it widens nothing)."""
    before = applied_env_from(env)
    after = EnvPatch(dict(action.set_env), tuple(action.remove_env)).apply_to(before)
    return within(after, before) and (rollback or narrower(after, before))


def narrowing_actions(ctx: "ExecutionContext", status: Mapping[str, Any], actions: Any) -> list[PatchEnv]:
    """The PatchEnv actions that may run although the status recording them was refused."""
    if ctx.observations is None or not ctx.observations.deployment.exists:
        return []
    env = ctx.observations.deployment.env
    rollback = new_rollback(ctx.previous_status, status) is not None
    return [a for a in actions if isinstance(a, PatchEnv) and narrows(a, env, rollback)]


def oldest_sample(observations: Observations | None) -> datetime | None:
    """The evidence's age: the oldest of the newest samples of this rollout's pods.

    The no-go showed in one of them; taking the oldest bounds detection from above.
    """
    if observations is None or not observations.metrics.available:
        return None
    stamps = [p.sampled_at for p in observations.metrics.pods.values() if p.sampled_at is not None]
    return min(stamps) if stamps else None


def detection_start(clean_look_at: datetime | None, sampled: datetime | None) -> datetime | None:
    """Since when the no-go was (at most) visible in Prometheus.

    The newest samples alone under-count: the no-go may have shown several scrapes before
    this evaluation, up to an evaluation interval earlier. The previous look that found no
    no-go bounds it: the no-go became visible after that. Without one, the samples' age.
    """
    known = [t for t in (clean_look_at, sampled) if t is not None]
    return min(known) if known else None


class Executor:
    def __init__(self, kube: Any, metrics: Any, clock: Clock) -> None:
        self._kube = kube
        self._metrics = metrics
        self._clock = clock

    async def execute(self, ctx: ExecutionContext, decision: Any) -> ExecutionResult:
        changed = getattr(decision, "changed", True)
        # Unchanged: the status is the one read (no need to serialize the model again).
        unchanged = not changed and bool(ctx.previous_status)
        decided = dict(ctx.previous_status) if unchanged else dump_status(decision.status)
        result = ExecutionResult(status=decided)
        actions, notice = tuple(decision.actions), None
        if changed:
            actions, notice = await self._write_status(ctx, decided, actions, result)

        for action in actions:
            if isinstance(action, PatchEnv):
                if await self._kube.patch_env(ctx.namespace, ctx.deployment_name, action):
                    result.env_patched_at = self._clock.now()
            elif isinstance(action, RunPreflight):
                await self._kube.run_preflight(ctx.namespace, ctx.body, ctx.deployment_name, action)
            elif isinstance(action, EmitEvent):
                await self._emit(ctx, action, result)
            elif isinstance(action, ClearRollbackAnnotation):
                if ctx.rollback_annotation is not None:
                    await self._kube.clear_rollback_annotation(
                        ctx.namespace, ctx.name, ctx.rollback_annotation,
                        with_reason=ctx.rollback_reason_annotation,
                    )
            else:
                raise TypeError(f"unknown action {action!r}")
        if notice is not None:  # after the actions: a rollback is not held up by an Event
            await self._emit(ctx, notice, result)

        # A rollback counts when it is recorded, or (status refused) when its env patch ran.
        applied = decided if result.status_refused is None or actions else result.status
        result.rollback = new_rollback(ctx.previous_status, applied)
        if result.rollback is not None:
            self._count_rollback(ctx, result)
        return result

    async def _write_status(
        self, ctx: ExecutionContext, decided: dict[str, Any], actions: tuple[Any, ...], result: ExecutionResult
    ) -> tuple[tuple[Any, ...], EmitEvent | None]:
        """The status (the intent) before anything runs: (the actions to run now, an Event to
        post after them). No answer, a 5xx: raises, nothing runs. A refusal: see the module."""
        patch = merge_patch(dict(ctx.previous_status), decided)
        if not patch:
            return actions, None
        try:
            await self._kube.patch_rollout_status(ctx.namespace, ctx.name, patch)
            result.status_patched = True
            return actions, None
        except KubernetesError as exc:
            if not refused_by_api_server(exc):
                raise
            first = exc
        refusal = await self._write_trimmed(ctx, decided, first, result)
        if refusal is not None:
            return self._refused(ctx, decided, refusal, actions, result)
        kept = len(result.status.get("history") or ())
        return actions, EmitEvent("Warning", STATUS_REFUSED, (
            f"status refused by the API server ({first}); written with the "
            f"{result.history_dropped} oldest history entries dropped ({kept} kept)"))

    async def _emit(self, ctx: ExecutionContext, event: EmitEvent, result: ExecutionResult) -> None:
        try:
            await self._kube.emit_event(ctx.body, event)
            result.events.append(event)
        except KubernetesError as exc:  # an Event lost is not worth a lost transition
            logger.warning(
                "event=event_not_posted namespace=%s name=%s reason=%s error=%r",
                ctx.namespace, ctx.name, event.reason, str(exc),
            )

    async def _write_trimmed(
        self, ctx: ExecutionContext, decided: dict[str, Any], exc: KubernetesError, result: ExecutionResult
    ) -> KubernetesError | None:
        """Retry the refused status with its history trimmed, newest entries kept; None when one
        was written (then `result.status` is it), else the last refusal."""
        history = list(decided.get("history") or ())
        logger.warning(
            "event=status_refused namespace=%s name=%s status=%s error=%s history=%d retry=trimmed_history",
            ctx.namespace, ctx.name, exc.status, json.dumps(str(exc)), len(history),
        )
        for keep in history_trims(len(history)):
            trimmed = {**decided, "history": history[len(history) - keep:]}
            try:
                await self._kube.patch_rollout_status(
                    ctx.namespace, ctx.name, merge_patch(dict(ctx.previous_status), trimmed)
                )
            except KubernetesError as again:
                if not refused_by_api_server(again):
                    raise
                exc = again
                continue
            result.status, result.status_patched = trimmed, True
            result.history_dropped = len(history) - keep
            logger.warning(
                "event=status_written_trimmed namespace=%s name=%s history_dropped=%d history_kept=%d",
                ctx.namespace, ctx.name, result.history_dropped, keep,
            )
            return None
        return exc

    def _refused(
        self, ctx: ExecutionContext, decided: Mapping[str, Any], exc: KubernetesError,
        actions: tuple[Any, ...], result: ExecutionResult,
    ) -> tuple[tuple[Any, ...], EmitEvent]:
        """No status written: what runs anyway (the narrowing PatchEnv actions, then the
        decision's Events, which describe the rollback), and the Event that says so (also logged)."""
        result.status = dict(ctx.previous_status)
        result.status_refused = str(exc)
        narrowing = tuple(narrowing_actions(ctx, decided, actions))
        rollback = new_rollback(ctx.previous_status, decided)
        if narrowing:
            what = "narrowing the env anyway" + (
                f" ({rollback.get('playbook')}, {rollback.get('reason')})" if rollback else "")
        else:
            what = "nothing applied; the next tick decides again"
        skipped = sorted({type(a).__name__ for a in actions if a not in narrowing and not isinstance(a, EmitEvent)})
        logger.error(
            "event=status_not_written namespace=%s name=%s status=%s error=%s narrowing=%s "
            "env_patches=%d skipped=%s",
            ctx.namespace, ctx.name, exc.status, json.dumps(str(exc)), str(bool(narrowing)).lower(),
            len(narrowing), ",".join(skipped) or "none",
        )
        notice = EmitEvent("Warning", STATUS_REFUSED, f"status refused by the API server ({exc}): {what}")
        if not narrowing:
            return (), notice
        return narrowing + tuple(a for a in actions if isinstance(a, EmitEvent)), notice

    def _count_rollback(self, ctx: ExecutionContext, result: ExecutionResult) -> None:
        rollback = result.rollback or {}
        reason = str(rollback.get("reason", ""))
        self._metrics.rollbacks.labels(
            ctx.namespace, ctx.name, str(rollback.get("playbook", "")), reason
        ).inc()
        if result.env_patched_at is None or reason in EXTERNAL_REASONS:
            return
        started = detection_start(ctx.clean_look_at, oldest_sample(ctx.observations))
        if started is not None:
            self._metrics.detection_seconds.observe(
                max(0.0, (result.env_patched_at - started).total_seconds())
            )
