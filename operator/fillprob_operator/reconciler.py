"""One evaluation of one FillProbRollout: observe, decide, execute.

This is the services layer between the kopf handlers and the adapters. Each tick re-reads
the truth (the FillProbRollout, its Deployment, the preflight Job, Prometheus; the new pods'
logs are followed streams, adapters/logs.py; the Kubernetes objects come from watch-backed
caches when those can vouch for them, adapters/watches.py), hands it to the pure `decide()`,
and lets the executor apply the result. Nothing it needs lives only in
memory: a restarted operator resumes from `status`, and alerts the receiver accepted wait on
the rollout itself (`alert.grinder.io/` annotations) until a tick has taken them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Mapping

from .adapters.clock import Clock
from .adapters.executor import ExecutionContext, Executor
from .adapters.kubernetes import (
    ROLLBACK_ANNOTATION,
    ROLLBACK_REASON_ANNOTATION,
    KubernetesError,
    alert_annotation_name,
    decode_rollback_request,
    is_alert_annotation,
)
from .adapters.watches import rv_int
from .api import RolloutStatus, status_from_dict
from .domain.actions import EmitEvent
from .domain.durations import parse_duration
from .domain.observations import MetricsObservation, Observations, RollbackRequest
from .domain.selector import Selector, default_selector, parse_selector
from .domain.status import READY, set_condition
from .metrics import GATE_ERROR, GATE_GO, GATE_NODATA, GATE_NOGO, OperatorMetrics

logger = logging.getLogger("fillprob_operator")

DEFAULT_INTERVAL_SECONDS = 30.0
INVALID_SPEC = "InvalidSpec"
# States in which the gates run (guarding never ends: a Passed step is still watched).
GATED_STATES = frozenset({"Verifying", "Observing", "Passed", "RolledBack"})
# Stored alerts one tick hands to decide(): a flood is taken in bounded bites, oldest first
# (the domain records each in history and status.requestKeys, both bounded to 100).
ALERTS_PER_TICK = 50
# Past an interval bucket's start before its tick asks for the bucket's answer (`until_due`):
# a timer never takes the previous bucket's for it.
BOUNDARY_SLACK_SECONDS = 0.005
# Parses kept, each kind by its input (`Reconciler.parse_spec`, `rollout_selector`,
# `evaluation_interval`): one per rollout, and room for the changes.
PARSES_REMEMBERED = 4096


def kv(event: str, **fields: Any) -> str:
    """A structured log line: `event=... key=value ...`, values JSON-quoted when needed."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, str):
            text = json.dumps(value) if not value or any(c in value for c in ' ="\n') else value
        else:
            text = json.dumps(value, default=str, sort_keys=True, separators=(",", ":"))
        parts.append(f"{key}={text}")
    return " ".join(parts)


def evaluation_interval(raw_spec: Mapping[str, Any]) -> float:
    """`spec.prometheus.interval` in seconds (default 30s, lower bound 1s), read from the raw
    spec so that even an invalid spec keeps its evaluation rhythm. A string is parsed once and
    remembered (every tick asks); anything else an invalid spec holds is the default."""
    interval = (raw_spec.get("prometheus") or {}).get("interval")
    return _interval_seconds(interval) if isinstance(interval, str) else _interval_of(interval)


def _interval_of(interval: Any) -> float:
    try:
        seconds = parse_duration(interval).total_seconds() if interval else DEFAULT_INTERVAL_SECONDS
    except ValueError:
        seconds = DEFAULT_INTERVAL_SECONDS
    return max(1.0, seconds)


_interval_seconds = functools.lru_cache(maxsize=PARSES_REMEMBERED)(_interval_of)


def validation_message(exc: Exception, prefix: str = "spec") -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            lines = [
                ".".join([prefix, *(str(p) for p in err.get("loc", ()))]) + ": " + str(err.get("msg"))
                for err in errors()
            ]
            return "; ".join(lines)[:1024]
        except Exception:
            pass
    return str(exc)[:1024]


def _annotation_owner(body: Mapping[str, Any], annotation: str) -> tuple[str, str]:
    """(manager, time) of the newest managedFields entry that set `annotation`."""
    best = ("", "")
    for entry in (body.get("metadata") or {}).get("managedFields") or ():
        annotations = ((entry.get("fieldsV1") or {}).get("f:metadata") or {}).get("f:annotations") or {}
        if f"f:{annotation}" in annotations and (entry.get("time") or "") >= best[1]:
            best = (entry.get("manager") or "", entry.get("time") or "")
    return best


def rollback_request_from_annotation(body: Mapping[str, Any]) -> RollbackRequest | None:
    """`grinder.io/rollback: R1|R2|R3` on the FillProbRollout (API.md, manual rollback).

    The idempotency key is the value plus when it was set (managedFields), so the same
    annotation is applied once, and setting it again later is a new request. A value other
    than R1/R2/R3 is passed on too: the domain rejects it in history and the annotation is
    removed, so the person who set it sees why.
    """
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    value = annotations.get(ROLLBACK_ANNOTATION)
    if value is None:
        return None
    playbook = value.strip().upper()
    manager, set_at = _annotation_owner(body, ROLLBACK_ANNOTATION)
    why = annotations.get(ROLLBACK_REASON_ANNOTATION, "")
    source = f"annotation {ROLLBACK_ANNOTATION}={playbook}"
    if manager:
        source += f" by {manager}"
    if why:
        source += f": {why}"
    evidence: dict[str, object] = {"annotation": value}
    if manager:
        evidence["manager"] = manager
    if set_at:
        evidence["setAt"] = set_at
    if why:
        evidence["why"] = why
    stamp = set_at or f"rv{meta.get('resourceVersion', '')}"
    return RollbackRequest(
        playbook=playbook,
        reason="ManualRollback",
        source=source,
        evidence=evidence,
        key=f"annotation/{meta.get('uid', '')}/{playbook}/{stamp}",
    )


@dataclass(frozen=True)
class StoredAlerts:
    """The alert annotations on a FillProbRollout, as one tick takes them."""

    # At most ALERTS_PER_TICK, oldest `startsAt` first; the rest wait for the next tick.
    requests: tuple[RollbackRequest, ...] = ()
    # (annotation name, why) of values that are not a stored alert: removed, never taken.
    unreadable: tuple[tuple[str, str], ...] = ()
    waiting: int = 0


def alert_requests_from_annotations(body: Mapping[str, Any]) -> StoredAlerts:
    """The alerts the Alertmanager receiver stored on the rollout (API.md, "Alert intake is
    durable"). A value that does not read back is reported, never raised: a hand-written or
    hostile annotation must not stop the tick that guards the rollout."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    readable: list[RollbackRequest] = []
    unreadable: list[tuple[str, str]] = []
    for name in sorted(a for a in annotations if is_alert_annotation(a)):
        try:
            readable.append(decode_rollback_request(name, annotations[name]))
        except ValueError as exc:
            unreadable.append((name, str(exc)))
    readable.sort(key=lambda r: (str(r.evidence.get("startsAt", "")), r.key))
    return StoredAlerts(
        requests=tuple(readable[:ALERTS_PER_TICK]),
        unreadable=tuple(unreadable),
        waiting=max(0, len(readable) - ALERTS_PER_TICK),
    )


def taken_request_keys(status: Mapping[str, Any]) -> set[str]:
    """The request keys the domain has taken: in history (evidence.requestKey) or in
    status.requestKeys, which keeps them after history has rolled over (domain/outside.py)."""
    keys = {(entry.get("evidence") or {}).get("requestKey") for entry in status.get("history") or ()}
    keys.update(status.get("requestKeys") or ())
    keys.discard(None)
    keys.discard("")
    return keys


class Wakeup:
    """One rollout's wake-up, set and awaited on the event loop: what asyncio.Event does for a
    daemon, for one future and one timer per wait. (Waiting on an Event with a timeout, and on
    kopf's stop flag beside it, took about five tasks per tick, each cancelled at the end: 0.1 to
    0.2 ms of the loop's time per rollout per tick, against 10 us now; issue 10.)"""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        # Usually one: two while a rollout deleted and recreated under its name has two daemons.
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for waiter in self._waiters:
            _resolve(waiter)

    def clear(self) -> None:
        self._set = False

    async def wait_or(self, other: asyncio.Future[Any]) -> bool:
        """Until set or `other` is done, with no timer and no task; whether it was set first."""
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        done = functools.partial(_resolve_after, waiter)
        other.add_done_callback(done)
        try:
            await waiter
        finally:
            other.remove_done_callback(done)
            self._waiters.remove(waiter)
        return self._set and not other.done()

    async def wait(self, timeout: float) -> bool:
        """Until set or `timeout` seconds passed; whether it is set."""
        if self._set:
            return True
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(max(0.0, timeout), _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.remove(waiter)
        return self._set


def _fetched_behind(task: asyncio.Future[Any]) -> None:
    """A hurried tick's own fetch, left to finish: its failure is only logged."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning(kv("prometheus_observe_failed", error=repr(exc)))


def _resolve_after(waiter: asyncio.Future[None], _done: asyncio.Future[Any]) -> None:
    _resolve(waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Wakeups:
    """One `Wakeup` per rollout: set by the update handlers and the log streams, awaited by the
    daemon.

    Also the newest resourceVersion kopf's own watch showed of each rollout (`saw`): a tick that
    takes the rollout from the watch-backed cache never takes one older than that (a manual
    rollback or an alert stored by another replica is never missed by a lagging cache)."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], Wakeup] = {}
        self._seen: dict[tuple[str, str], int] = {}

    def saw(self, namespace: str, name: str, resource_version: int | None) -> None:
        if resource_version is not None:
            key = (namespace, name)
            self._seen[key] = max(self._seen.get(key, 0), resource_version)

    def floor(self, namespace: str, name: str) -> int:
        return self._seen.get((namespace, name), 0)

    def event(self, namespace: str, name: str) -> Wakeup:
        found = self._events.get((namespace, name))
        if found is None:
            found = self._events[(namespace, name)] = Wakeup()
        return found

    def wake(self, namespace: str, name: str) -> None:
        self.event(namespace, name).set()

    def drop(self, namespace: str, name: str) -> None:
        self._events.pop((namespace, name), None)
        self._seen.pop((namespace, name), None)


@dataclass(frozen=True)
class DomainPort:
    """The pure domain, as the reconciler calls it (swappable in tests).

    `parse_spec` raises ValueError with what to fix; `parse_status` gives None when the
    operator has not written a status yet and raises ValueError when it cannot be read.
    """

    parse_spec: Callable[[Mapping[str, Any]], Any]
    parse_status: Callable[[Mapping[str, Any]], Any]
    decide: Callable[..., Any]

    @classmethod
    def load(cls) -> "DomainPort":
        from .api import parse_spec, status_from_dict
        from .domain.decide import decide

        return cls(parse_spec=parse_spec, parse_status=status_from_dict, decide=decide)


def rollout_selector(raw_spec: Mapping[str, Any], namespace: str) -> Selector:
    """`spec.prometheus.selector`, or this Deployment's pods in this namespace."""
    text = ((raw_spec.get("prometheus") or {}).get("selector") or "").strip()
    deployment = raw_spec.get("deploymentName", "")
    if isinstance(deployment, str):
        return _selector(text, namespace, deployment)
    return parse_selector(text) if text else default_selector(namespace, deployment)


@functools.lru_cache(maxsize=PARSES_REMEMBERED)
def _selector(text: str, namespace: str, deployment: str) -> Selector:
    """The selector of these strings, parsed once (a Selector is frozen; a SelectorError is
    raised again each time, never remembered)."""
    return parse_selector(text) if text else default_selector(namespace, deployment)


@dataclass(frozen=True)
class TickOutcome:
    interval: float
    gone: bool = False
    phase: str = ""
    state: str = ""
    # (url, selector) the tick asked Prometheus with; None: it did not get that far.
    prometheus: tuple[str, Selector] | None = None


class Reconciler:
    def __init__(
        self,
        *,
        kube: Any,
        gateway: Any,
        executor: Executor,
        metrics: OperatorMetrics,
        clock: Clock,
        domain: DomainPort,
        default_prometheus_url: str,
    ) -> None:
        self.kube = kube
        self.gateway = gateway
        self.executor = executor
        self.metrics = metrics
        self.clock = clock
        self.domain = domain
        self.default_prometheus_url = default_prometheus_url
        # Per rollout: when the gates last looked at its Prometheus data and found no no-go
        # (for fillprob_rollout_detection_seconds; lost on restart, which only loosens it).
        self._clean_look_at: dict[tuple[str, str], datetime] = {}
        # repr(raw spec) -> the parsed spec (frozen): a spec is parsed once, not at every tick.
        self._specs: dict[str, Any] = {}

    def parse_spec(self, raw_spec: Mapping[str, Any]) -> Any:
        """`domain.parse_spec`, remembered by the raw spec's repr (exact for JSON values: a
        tuple and a list, 1 and 1.0 and True, differ): the parsed spec is immutable, and
        parsing depends on nothing else. Only a spec that parses is remembered."""
        if type(raw_spec) is not dict:  # a repr that may not show the content: not remembered
            return self.domain.parse_spec(raw_spec)
        key = repr(raw_spec)
        spec = self._specs.get(key)
        if spec is None:
            spec = self.domain.parse_spec(raw_spec)
            if len(self._specs) >= PARSES_REMEMBERED:
                del self._specs[next(iter(self._specs))]
            self._specs[key] = spec
        return spec

    async def tick(
        self, namespace: str, name: str, *, cached: bool = False, seen: int = 0, hurry: Wakeup | None = None,
    ) -> TickOutcome:
        """`cached`: the rollout may come from the watch-backed cache, if that is at least as new
        as `seen` (kopf's view) and as every version of it this process read or wrote; the
        daemon's first tick reads it directly (another process may have written it last).
        `hurry`: the rollout's wake-up (cleared before the tick); set while this tick waits for
        Prometheus by a circuit-breaker line, the tick decides at once (`_observe_metrics`)."""
        body = await self.kube.read_rollout(namespace, name, cached=cached, floor=seen)
        if body is None:
            self._clean_look_at.pop((namespace, name), None)
            return TickOutcome(interval=DEFAULT_INTERVAL_SECONDS, gone=True)
        meta = body.get("metadata") or {}
        raw_spec = body.get("spec") or {}
        raw_status = body.get("status") or {}
        generation = int(meta.get("generation") or 0)
        interval = evaluation_interval(raw_spec)
        now = self.clock.now()

        spec_error = ""
        try:
            spec = self.parse_spec(raw_spec)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            # API.md: keep guarding the current rung with the last spec applied (status).
            spec_error = validation_message(exc)
            applied = raw_status.get("appliedSpec")
            try:
                spec = self.parse_spec(applied) if applied else None
            except ValueError:
                spec = None
            if spec is None:
                await self._invalid_spec(namespace, name, body, raw_status, spec_error, now)
                return TickOutcome(interval, phase=raw_status.get("phase", ""), state=raw_status.get("state", ""))
            logger.warning(kv("invalid_spec_guarding", namespace=namespace, name=name, generation=generation,
                              message=spec_error))
        read_spec = raw_spec if not spec_error else raw_status.get("appliedSpec") or {}
        selector = rollout_selector(read_spec, namespace)
        try:
            status = self.domain.parse_status(raw_status)
        except ValueError as exc:
            # Never start over from scratch on a status we cannot read: report and wait.
            logger.error(kv("invalid_status", namespace=namespace, name=name,
                            error=validation_message(exc, "status")))
            return TickOutcome(interval, phase=raw_status.get("phase", ""), state=raw_status.get("state", ""))

        deployment_name = spec.deployment_name
        url = ((read_spec.get("prometheus") or {}).get("url") or self.default_prometheus_url).rstrip("/")
        # The Job is looked at while a preflight runs; its result is in status afterwards.
        preflight_status = raw_status.get("preflight") or {}
        job_name = preflight_status.get("jobName") if (
            preflight_status.get("state") == "Running" or raw_status.get("state") == "Preflight"
        ) else None

        # Watch-backed caches answer only when they have seen at least as far as this body (a
        # daemon's first tick) or as this rollout's last observation (later ticks; kubernetes.py
        # `_as_of_floor`): what the status says happened is never newer than what we see.
        floor = rv_int(body)
        started = time.monotonic()
        # One after another, not gathered: in the steady state each answers from what is already
        # here (the caches, the bucket's shared answer) without waiting, and three tasks a tick
        # cost more than the reads (issue 10). The Deployment is observed first, as it was.
        observe_deployment = functools.partial(
            self.kube.observe_deployment, namespace, deployment_name, raw_spec.get("containerName"),
            rollout=name, floor=floor,
        )
        deployment = await observe_deployment()
        deployment, metrics = await self._observe_metrics(
            namespace, name, deployment, url, interval, now, selector, hurry, observe_deployment
        )
        preflight = await self.kube.observe_preflight(namespace, job_name, floor=floor) if job_name else None
        if problem := "; ".join(f"spec.prometheus.selector: {p}" for p in spec.prometheus.selector_problems):
            metrics = MetricsObservation(available=False, reason=problem, queried_at=metrics.queried_at)
        annotation_request = rollback_request_from_annotation(body)
        annotation_value = (meta.get("annotations") or {}).get(ROLLBACK_ANNOTATION)
        alerts = alert_requests_from_annotations(body)
        for annotation, why in alerts.unreadable:
            logger.warning(kv("alert_annotation_unreadable", namespace=namespace, name=name,
                              annotation=annotation, error=why, action="removed"))
        if alerts.waiting:
            logger.info(kv("alerts_waiting", namespace=namespace, name=name, taken=len(alerts.requests),
                           waiting=alerts.waiting))
        observations = Observations(
            deployment=deployment,
            metrics=metrics,
            preflight=preflight,
            rollback_requests=((annotation_request,) if annotation_request else ()) + alerts.requests,
            spec_error=spec_error,
        )

        previous_state = raw_status.get("state", "")
        observed = time.monotonic()
        try:
            decision = self.domain.decide(
                spec, status, observations, now,
                generation=generation, name=name, namespace=namespace,
                # The same status parsed again: decide changes it instead of deep-copying status.
                scratch=self.domain.parse_status(raw_status) if status is not None else None,
            )
        except Exception:
            if previous_state in GATED_STATES:
                self.metrics.count_gate(GATE_ERROR)
            raise

        decided = time.monotonic()
        result = await self.executor.execute(
            ExecutionContext(
                namespace=namespace,
                name=name,
                body=body,
                deployment_name=deployment_name,
                previous_status=raw_status,
                observations=observations,
                rollback_annotation=annotation_value if annotation_request else None,
                rollback_reason_annotation=ROLLBACK_REASON_ANNOTATION in (meta.get("annotations") or {}),
                clean_look_at=self._clean_look_at.get((namespace, name)),
            ),
            decision,
        )
        # Where a transition's time went (the log line): observing (reads, the Prometheus
        # answer), deciding, acting (status, env patch, Events).
        timings = {"observe_ms": 1000 * (observed - started), "decide_ms": 1000 * (decided - observed),
                   "act_ms": 1000 * (time.monotonic() - decided)}
        # Only now, with the status that records them written: remove the stored alerts that
        # decide() took. One it did not look at (suspended, Deployment missing) stays.
        taken = taken_request_keys(result.status)
        await self._remove_alerts(namespace, name, [
            *(alert_annotation_name(r.key) for r in alerts.requests if r.key in taken),
            *(annotation for annotation, _ in alerts.unreadable),
        ])

        new = result.status
        gate_result = self._gate_result(raw_status, new, result.rollback, metrics.available)
        if previous_state in GATED_STATES:
            self.metrics.count_gate(gate_result)
        if previous_state in GATED_STATES and gate_result == GATE_GO and metrics.queried_at is not None:
            self._clean_look_at[(namespace, name)] = metrics.queried_at
        else:
            self._clean_look_at.pop((namespace, name), None)
        phase, state = str(new.get("phase", "")), str(new.get("state", ""))
        self.metrics.set_info(namespace, name, phase, state)
        self.metrics.set_evaluated(
            namespace, name, self.clock.now().timestamp(), interval,
            {str(c.get("type")): str(c.get("status")) for c in new.get("conditions") or () if c.get("type")},
        )
        if result.status_refused is None:  # else the executor said what ran (status_not_written)
            self._log_transition(namespace, name, raw_status, new, result, timings)
        return TickOutcome(interval, phase=phase, state=state, prometheus=(url, selector))

    async def until_due(self, outcome: TickOutcome, wake: Wakeup) -> bool:
        """Until the rollout's next interval tick is due, or `wake` is set first: whether it was.

        Due: when the next interval bucket's Prometheus answer is here (`gateway.answer`), at
        most one interval after the bucket begins. Every rollout of a URL and interval thus
        decides right after the answer its tick reads, rather than at its own moment in the
        interval (up to one interval later): a Prometheus-only no-go waits for the next query and
        no more (issue 10: within interval + scrape interval + 1 s). The ticks that come due
        together start a few per turn of the loop (pacer.py), and none holds its rollout while
        the answer is fetched. A tick that did not ask Prometheus waits one interval."""
        interval = outcome.interval
        if outcome.prometheus is None:
            return await wake.wait(interval)
        url, selector = outcome.prometheus
        to_boundary = interval - self.clock.now().timestamp() % interval + BOUNDARY_SLACK_SECONDS
        if await wake.wait(to_boundary):
            return True
        return await wake.wait_or(self.gateway.answer(url, interval, self.clock.now(), selector, limit=interval))

    async def _observe_metrics(
        self, namespace: str, name: str, deployment: Any, url: str, interval: float, now: datetime,
        selector: Selector, hurry: Wakeup | None, observe_deployment: Callable[[], Any],
    ) -> tuple[Any, MetricsObservation]:
        """(deployment, metrics): this interval's Prometheus answer, unless a circuit-breaker line
        is in the new pods' logs. Such a line is a no-go whatever Prometheus says (gates.py), so
        that tick takes the newest answer here rather than wait for this interval's (issue 10:
        CB trip -> env patched within 1 s, however slow Prometheus is). A line that arrives
        while the tick waits sets `hurry`: the Deployment is observed again (from the caches)
        and, with the line in it, the tick goes on at once; the answer it waited for is fetched
        behind it. Woken for anything else, it waits on."""
        rollout = (namespace, name)
        urgent = any(p.circuit_breaker_lines for p in deployment.new_pods)
        if urgent or hurry is None or self.gateway.answered(url, interval, now, selector):
            return deployment, await self.gateway.observe(url, interval, now, selector, rollout=rollout, wait=not urgent)
        fetch = asyncio.ensure_future(self.gateway.observe(url, interval, now, selector, rollout=rollout))
        try:
            hurried = await hurry.wait_or(fetch)
            seen = await observe_deployment() if hurried else None
        except BaseException:  # cancelled (the daemon stops), or the Deployment unreadable
            fetch.add_done_callback(_fetched_behind)  # nobody awaits it: it ends on its own
            raise
        if seen is None or not any(p.circuit_breaker_lines for p in seen.new_pods):
            return deployment, await fetch
        fetch.add_done_callback(_fetched_behind)
        logger.info(kv("tick_hurried", namespace=namespace, name=name, reason="circuit_breaker_line"))
        return seen, await self.gateway.observe(url, interval, now, selector, rollout=rollout, wait=False)

    async def _remove_alerts(self, namespace: str, name: str, annotations: list[str]) -> None:
        """A failed removal is retried next tick: the domain never applies a key it has taken
        (status), so a stored alert left behind is only removed later, never applied twice."""
        if not annotations:
            return
        try:
            await self.kube.remove_alert_annotations(namespace, name, annotations)
        except KubernetesError as exc:
            logger.warning(kv("alerts_not_removed", namespace=namespace, name=name, count=len(annotations),
                              error=str(exc)))

    @staticmethod
    def _gate_result(
        old: Mapping[str, Any], new: Mapping[str, Any], rollback: Any, metrics_available: bool
    ) -> str:
        if rollback is not None or (new.get("state") == "Halted" and old.get("state") != "Halted"):
            return GATE_NOGO
        if not metrics_available:
            return GATE_NODATA
        return GATE_GO

    @staticmethod
    def _log_transition(
        namespace: str, name: str, old: Mapping[str, Any], new: Mapping[str, Any], result: Any,
        timings: Mapping[str, float] | None = None,
    ) -> None:
        before = (old.get("phase"), old.get("step"), old.get("state"))
        after = (new.get("phase"), new.get("step"), new.get("state"))
        if before == after and result.rollback is None:
            return
        last = (new.get("history") or [{}])[-1]
        logger.info(kv(
            "transition", namespace=namespace, name=name,
            from_phase=before[0], from_step=before[1], from_state=before[2],
            phase=after[0], step=after[1], state=after[2],
            action=last.get("action"), reason=last.get("reason"),
            playbook=(result.rollback or {}).get("playbook"),
            env_patched=result.env_patched_at is not None,
            **{k: f"{v:.0f}" for k, v in (timings or {}).items()},
        ))

    async def _invalid_spec(
        self,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        raw_status: Mapping[str, Any],
        message: str,
        now: datetime,
    ) -> None:
        """Ready=False/InvalidSpec with the message; nothing else changes, no actions, no
        traceback loop; written (and the Event posted) once per generation and message."""
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        logger.warning(kv("invalid_spec", namespace=namespace, name=name, generation=generation, message=message))
        try:
            status = status_from_dict(raw_status) or RolloutStatus()
        except ValueError:
            return  # an unreadable status is reported by the tick that needs it
        old = status.condition(READY)
        if old is not None and (old.reason, old.message, old.observed_generation) == (
            INVALID_SPEC, message, generation
        ):
            return
        status.conditions = set_condition(status.conditions, READY, False, INVALID_SPEC, message, now, generation)
        decision = _Decision(status=status.to_patch_body(), actions=(EmitEvent("Warning", INVALID_SPEC, message),))
        await self.executor.execute(
            ExecutionContext(
                namespace=namespace, name=name, body=body,
                deployment_name=(body.get("spec") or {}).get("deploymentName", ""),
                previous_status=raw_status,
            ),
            decision,
        )
        self.metrics.set_info(namespace, name, status.phase.value, status.state.value)


@dataclass(frozen=True)
class _Decision:
    status: Mapping[str, Any]
    actions: tuple[Any, ...]
    changed: bool = True
