"""Execute a Decision: ONE status patch, then its actions in order.

The executor decides nothing. The status is the intent and is written first (skipped when
unchanged); then the actions run. If the status write fails, nothing is done; if an action
fails, the next tick sees the written intent and `decide()` asks for the action again
(it is level-based: a PatchEnv while the Deployment lacks the restart token, a RunPreflight
while the Job is absent), and every action is idempotent (restart token, Job name,
annotation test). It also counts the rollbacks the new status records and times detection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from ..domain.actions import ClearRollbackAnnotation, EmitEvent, PatchEnv, RunPreflight
from ..domain.observations import Observations
from ..domain.status import merge_patch
from .clock import Clock
from .kubernetes import KubernetesError

logger = logging.getLogger("fillprob_operator.executor")

# Rollbacks asked for from outside the gates: no Prometheus sample to time them from.
EXTERNAL_REASONS = frozenset({"ManualRollback", "AlertFired"})


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
    status: dict[str, Any]
    status_patched: bool = False
    env_patched_at: datetime | None = None
    rollback: Mapping[str, Any] | None = None
    events: list[EmitEvent] = field(default_factory=list)


def dump_status(status: Any) -> dict[str, Any]:
    if isinstance(status, Mapping):
        return dict(status)
    return status.model_dump(by_alias=True, exclude_none=True, mode="json")


def new_rollback(previous: Mapping[str, Any], current: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The `lastRollback` this decision recorded, if it is a new one."""
    last = current.get("lastRollback")
    return last if last and last != previous.get("lastRollback") else None


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
        result = ExecutionResult(status=dump_status(decision.status))
        if getattr(decision, "changed", True):
            patch = merge_patch(dict(ctx.previous_status), result.status)
            if patch:
                await self._kube.patch_rollout_status(ctx.namespace, ctx.name, patch)
                result.status_patched = True

        for action in decision.actions:
            if isinstance(action, PatchEnv):
                if await self._kube.patch_env(ctx.namespace, ctx.deployment_name, action):
                    result.env_patched_at = self._clock.now()
            elif isinstance(action, RunPreflight):
                await self._kube.run_preflight(ctx.namespace, ctx.body, ctx.deployment_name, action)
            elif isinstance(action, EmitEvent):
                try:
                    await self._kube.emit_event(ctx.body, action)
                    result.events.append(action)
                except KubernetesError as exc:  # an Event lost is not worth a lost transition
                    logger.warning(
                        "event=event_not_posted namespace=%s name=%s reason=%s error=%r",
                        ctx.namespace, ctx.name, action.reason, str(exc),
                    )
            elif isinstance(action, ClearRollbackAnnotation):
                if ctx.rollback_annotation is not None:
                    await self._kube.clear_rollback_annotation(
                        ctx.namespace, ctx.name, ctx.rollback_annotation,
                        with_reason=ctx.rollback_reason_annotation,
                    )
            else:
                raise TypeError(f"unknown action {action!r}")

        result.rollback = new_rollback(ctx.previous_status, result.status)
        if result.rollback is not None:
            self._count_rollback(ctx, result)
        return result

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
