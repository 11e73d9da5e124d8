"""kopf handlers: thin, module-level. `kopf run -m fillprob_operator.handlers`.

- startup: settings (finalizer and storages under `grinder.io`, peering, event posting),
  clients and the shared Prometheus gateway into `memo`, the metrics server;
- then, before kopf looks for the resources it serves, wait until the API server serves
  FillProbRollouts (`until_served`: kopf resolves them once and would otherwise serve none
  after starting beside a down or just-restarted API server);
- one daemon per FillProbRollout: every `spec.prometheus.interval`, as soon as the interval's
  Prometheus answer is here (`Reconciler.until_due`), or at once when woken (a spec change, a
  rollback request, a resolution or circuit-breaker line in a followed pod log),
  `Reconciler.tick` (observe -> decide -> execute);
- no finalizer on the rollouts (`release_finalizers`): the operator owns nothing outside the
  object that garbage collection does not remove, so neither deleting a rollout nor deleting
  its namespace ever waits for the operator (it may be uninstalled); a `DELETED` watch event
  stops the rollout's daemon instead;
- update handlers for `spec` and the `grinder.io/rollback` annotation only wake the daemon;
- the Alertmanager webhook receiver (FILLPROB_WEBHOOK_ADDR) stores each accepted alert on the
  rollout (an `alert.grinder.io/` annotation) before it answers, on every replica, active or
  standby, from the moment startup serves it; the watch event of that write wakes the daemon
  on the active replica, and the daemon's tick takes the alert and removes the annotation;
- cleanup: close what startup opened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from kopf._cogs.structs.references import match_namespace

from . import allocator, loop_lag
from .adapters.clock import SystemClock
from .adapters.executor import Executor
from .adapters.kubernetes import (
    GROUP,
    PLURAL,
    ROLLBACK_ANNOTATION,
    VERSION,
    KubernetesError,
    build_adapter,
    is_alert_annotation,
)
from .adapters.prometheus import PrometheusGateway, connect_prometheus
from .adapters.watches import rv_int
from .metrics import OperatorMetrics
from .pacer import Pacer
from .reconciler import (
    DEFAULT_INTERVAL_SECONDS,
    DomainPort,
    Reconciler,
    TickOutcome,
    Wakeup,
    Wakeups,
    kv,
)
from .settings import Settings
from .webhook import WebhookConfig, make_webhook_app, start_webhook_server

logger = logging.getLogger("fillprob_operator")

# No handler requires a finalizer (see `release_finalizers`), so kopf never adds this one; it stays
# the configured name so that kopf REMOVES it from rollouts that an older operator version
# finalized ("Removing the finalizer, as there are no handlers requiring it", kopf's processing).
FINALIZER = "grinder.io/finalizer"
STORAGE_PREFIX = "grinder.io"


class DiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled configuration without the stored alerts.

    kopf tracks every annotation in it and patches it whenever one changes: each stored or
    removed alert would cost a second write and copy the alert into that annotation too.
    Alerts are no spec change; the rollout's daemon reads them itself.
    """

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        essence = super().build(body=body, extra_fields=extra_fields)
        annotations = (essence.get("metadata") or {}).get("annotations") or {}
        for annotation in [a for a in annotations if is_alert_annotation(a)]:
            del annotations[annotation]
        self.remove_empty_stanzas(essence)
        return essence


def configure(settings: kopf.OperatorSettings, config: Settings) -> None:
    settings.persistence.finalizer = FINALIZER
    # Handler progress and the last-handled spec in annotations under grinder.io, so that
    # `status` holds only the rollout's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = DiffBaseStorage(
        prefix=STORAGE_PREFIX, key="last-handled-configuration"
    )
    # Transitions are posted as Events by the executor; kopf posts only its own troubles.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "fillprob-operator"
    if config.peering == "standalone":
        settings.peering.standalone = True
    else:
        settings.peering.standalone = False
        settings.peering.mandatory = True
        settings.peering.name = config.peering
        # Distinct priorities, or kopf pauses every replica (equal priorities "conflict").
        settings.peering.priority = config.peering_priority
        settings.peering.lifetime = config.peering_lifetime


def build_runtime(
    memo: Any,
    config: Settings,
    *,
    kube: Any = None,
    connect: Any = None,
    domain: DomainPort | None = None,
    clock: Any = None,
    metrics: OperatorMetrics | None = None,
) -> None:
    """Everything the handlers share, into `memo` (the keyword arguments are for tests)."""
    clock = clock or SystemClock()
    memo.config = config
    memo.io = ThreadPoolExecutor(config.io_threads, thread_name_prefix="fillprob-io")
    memo.metrics = metrics or OperatorMetrics(process=True)
    memo.kube = kube or build_adapter(
        timeout=config.kubernetes_timeout_seconds, executor=memo.io, clock=clock,
        pool_size=config.io_threads, metrics=memo.metrics, log_streams=config.log_streams,
        log_transport=config.log_transport,
        watch_namespaces=config.namespaces if config.watch_caches else None,
    )
    memo.gateway = PrometheusGateway(
        connect=connect or connect_prometheus(config.prometheus_timeout_seconds, pool_size=config.io_threads),
        lookback=config.prometheus_lookback,
        timeout=config.prometheus_timeout_seconds,
        executor=memo.io,
        metrics=memo.metrics,
        clock=clock,
    )
    memo.executor = Executor(memo.kube, memo.metrics, clock)
    memo.wakeups = Wakeups()
    memo.pacer = Pacer()  # the interval's ticks, a few per turn of the loop (pacer.py)
    # A resolution or circuit-breaker line in a followed pod log wakes its rollout at once.
    memo.kube.logs.wake_with(memo.wakeups.wake)
    # (namespace, name) of the rollouts whose daemon runs here: the webhook wakes those after
    # storing an alert (it accepts alerts for any rollout, see `submit_rollback`).
    memo.rollouts = set()
    # (namespace, name) -> uid of the rollout whose daemon owns that name's shared state here
    # (wakeup, metrics): a daemon of a deleted rollout never drops its successor's.
    memo.owners = {}
    # uid -> the alert annotations the last watch event showed: a new one wakes the daemon.
    memo.alert_annotations = {}
    # uids of the rollouts whose daemon runs here, and of those of them the watch reported
    # DELETED (their daemon exits at once).
    memo.running = set()
    memo.deleted = set()
    memo.reconciler = Reconciler(
        kube=memo.kube,
        gateway=memo.gateway,
        executor=memo.executor,
        metrics=memo.metrics,
        clock=clock,
        domain=domain or DomainPort.load(),
        default_prometheus_url=config.prometheus_url,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = Settings.from_env()
    # Set in __main__ before any thread; again here for `kopf run -m fillprob_operator.handlers`.
    arenas_limited = allocator.limit_arenas(config.malloc_arenas)
    logger.info(kv("malloc_arenas", limit=config.malloc_arenas or "default", applied=arenas_limited))
    configure(settings, config)
    build_runtime(memo, config)
    # What startup built (kopf, the Kubernetes client's models) lives as long as the process:
    # out of the collector's sight, a full collection walks only what ticks allocate, and
    # holds the GIL (the event loop) that much less (loop_lag.py measures it).
    gc.collect()
    gc.freeze()
    memo.gc_freezer = loop_lag.start_keep_frozen()  # and what the rollouts build, once a minute
    memo.gc_thresholds = loop_lag.take_over_full_collections()  # full ones only there
    memo.gc_pauses = loop_lag.GcPauses().install()

    def woke(lag: float) -> None:
        memo.metrics.event_loop_lag.observe(lag)
        memo.gc_pauses.drain(memo.metrics.observe_gc_pause)

    memo.loop_lag = loop_lag.start(woke)
    memo.kube.start_watches()
    served = None
    if config.metrics_host_port is not None:
        served = memo.metrics.serve(*config.metrics_host_port)
    webhook = WebhookConfig.from_env()
    if webhook is not None:
        app = make_webhook_app(
            webhook.token_provider, functools.partial(submit_rollback, memo),
            ready=functools.partial(can_store_alerts, memo),
        )
        memo.webhook_runner = await start_webhook_server(app, webhook.host, webhook.port)
    logger.info(kv(
        "startup", prometheus_url=config.prometheus_url, lookback=config.prometheus_lookback,
        metrics=f"{served[0]}:{served[1]}" if served else "off",
        webhook=f"{webhook.host}:{webhook.port}" if webhook else "off",
        namespaces=",".join(config.namespaces) or "*", peering=config.peering,
    ))


# `until_served`: how often it asks, how often it says it still waits, and how long it waits for
# an API server that answers without FillProbRollouts (a CRD being installed, or its discovery
# not yet filled after the API server started).
SERVED_POLL_SECONDS = 1.0
SERVED_REPORT_SECONDS = 10.0
SERVED_GRACE_SECONDS = 60.0


@kopf.on.startup()
async def until_served(memo: kopf.Memo, **_: Any) -> None:
    """Start watching only once the API server serves FillProbRollouts.

    kopf resolves the resources it serves from discovery once, when it starts, and again only
    when a CRD changes. Started while the API server is down or has just started (its CRD
    discovery is filled a moment after it answers), kopf finds no FillProbRollouts ("Unresolved
    resources cannot be served") and serves none until some CRD changes: no rollout would be
    guarded. kopf runs the startup handlers in order, so this one runs after `startup`: the
    receiver already takes alerts (503 while the API server is away) while this waits.
    An API server that answers without them for SERVED_GRACE_SECONDS (the CRD is not installed):
    go on, kopf serves them once the CRD is created.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    answered_at: float | None = None
    reported = began
    while True:
        try:
            if await memo.kube.serves_rollouts():
                if loop.time() - began >= SERVED_POLL_SECONDS:
                    logger.info(kv("rollouts_served", waited_seconds=round(loop.time() - began, 1)))
                return
            answered_at = answered_at if answered_at is not None else loop.time()
            problem = f"the API server does not serve {PLURAL}.{GROUP}/{VERSION} (is the CRD installed?)"
            if loop.time() - answered_at >= SERVED_GRACE_SECONDS:
                logger.warning(kv("rollouts_not_served", error=problem, waited_seconds=round(loop.time() - began, 1),
                                  then="watching anyway: kopf serves them once the CRD is created"))
                return
        except KubernetesError as exc:
            problem = f"the API server does not answer: {exc}"
        if loop.time() - reported >= SERVED_REPORT_SECONDS:
            reported = loop.time()
            logger.warning(kv("waiting_for_api_server", error=problem, waited_seconds=round(reported - began, 1)))
        await asyncio.sleep(SERVED_POLL_SECONDS)


# How long one answer of the API server stands for readiness (probes come every few seconds).
READY_CHECK_SECONDS = 5.0


async def can_store_alerts(memo: Any) -> str | None:
    """Why this replica cannot store an alert now, or None: the API server must answer
    (one GET /api/v1 per READY_CHECK_SECONDS at most, whatever the probe rate)."""
    now = asyncio.get_running_loop().time()
    checked_at, problem = memo.get("ready_check", (None, None))
    if checked_at is not None and now - checked_at < READY_CHECK_SECONDS:
        return problem
    try:
        await memo.kube.ping()
        problem = None
    except KubernetesError as exc:
        problem = f"the API server does not answer: {exc}"
    memo.ready_check = (now, problem)
    return problem


def watched(config: Settings, namespace: str) -> bool:
    """The namespace is one this operator watches (FILLPROB_NAMESPACES, kopf's own matching)."""
    return not config.namespaces or any(match_namespace(namespace, p) for p in config.namespaces)


async def submit_rollback(memo: Any, request: Any, namespace: str, name: str) -> bool:
    """The webhook's `submit`: store the alert on the rollout (API.md, "Alert intake is durable").

    Any replica, active or standby, accepts: the annotation outlives this process, and the
    replica that runs the rollout's daemon takes it. False (rejected) only for a rollout that
    does not exist or a namespace not watched; a failed write raises (the receiver answers 503).
    """
    if not watched(memo.config, namespace):
        return False
    if not await memo.kube.store_rollback_request(namespace, name, request):
        return False
    # The write's watch event wakes the daemon wherever it runs; here, at once.
    if (namespace, name) in memo.rollouts:
        memo.wakeups.wake(namespace, name)
    return True


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if "loop_lag" in memo:
        await loop_lag.stop(memo.loop_lag)
    if "gc_pauses" in memo:
        memo.gc_pauses.uninstall()
    if "gc_freezer" in memo:
        await loop_lag.stop(memo.gc_freezer)
    if "gc_thresholds" in memo:
        loop_lag.give_back_full_collections(memo.gc_thresholds)
    if "webhook_runner" in memo:
        await memo.webhook_runner.cleanup()
    if "kube" in memo:
        await memo.kube.logs.aclose()  # the log streams' connections, on this loop
    for closer in ("gateway", "kube", "metrics"):
        if closer in memo:
            memo[closer].close()
    if "io" in memo:
        memo.io.shutdown(wait=False, cancel_futures=True)


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def spec_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """A new spec (GitOps change, a lower targetPhase) is acted on now, not next interval."""
    memo.wakeups.wake(namespace, name)


@kopf.on.update(GROUP, VERSION, PLURAL, field=("metadata", "annotations", ROLLBACK_ANNOTATION))
async def rollback_requested(namespace: str, name: str, new: Any, memo: kopf.Memo, **_: Any) -> None:
    """`kubectl annotate fpr X grinder.io/rollback=R1`: apply it now."""
    if new:
        memo.wakeups.wake(namespace, name)


async def wake_when_stopped(stopped: Any, wake: Wakeup) -> None:
    """For a daemon's lifetime, one task: kopf's stop flag (the rollout deleted, a peering pause,
    the operator exiting) ends its wait for the next tick at once."""
    await stopped.wait()
    wake.set()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def rollout_event(
    type: str | None, namespace: str, name: str, uid: str, memo: kopf.Memo, body: Any = None, **_: Any
) -> None:
    """The watch said the rollout is gone: stop its daemon now. A new stored alert: act now.

    Without a finalizer kopf does not stop a daemon when its object disappears (it stops them
    on `deletionTimestamp`, which an object without finalizers never shows): this does.
    An alert annotation that was not there in the last event wakes the daemon (the receiver may
    run on another replica); one still there does not, so that a status write while an alert
    waits (suspended) is no hot loop: a removal that failed is retried at the next interval.
    """
    seen = memo.setdefault("alert_annotations", {})
    memo.wakeups.saw(namespace, name, rv_int(body) if body else None)
    if type == "DELETED":
        seen.pop(uid, None)
        if uid in memo.get("running", ()):
            memo.deleted.add(uid)
            memo.wakeups.wake(namespace, name)
        return
    annotations = ((body or {}).get("metadata") or {}).get("annotations") or {}
    alerts = frozenset(a for a in annotations if is_alert_annotation(a))
    if alerts - seen.get(uid, frozenset()):
        memo.wakeups.wake(namespace, name)
    if alerts:
        seen[uid] = alerts
    else:
        seen.pop(uid, None)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def rollout(
    namespace: str, name: str, memo: kopf.Memo, stopped: Any, uid: str = "", **_: Any
) -> None:
    """The rollout's loop: level-based, so a restart resumes from `status`."""
    key = (namespace, name)
    wake = memo.wakeups.event(namespace, name)
    memo.rollouts.add(key)
    memo.owners[key] = uid
    memo.running.add(uid)
    outcome = TickOutcome(interval=DEFAULT_INTERVAL_SECONDS)
    gone = False
    # The first tick here reads the rollout directly: another process (a replica that was active,
    # this one before a restart) may have written it last; later ticks may take it from the cache.
    cached = False
    woken = False
    stop_watcher = asyncio.create_task(wake_when_stopped(stopped, wake))
    try:
        while not stopped:
            if uid in memo.deleted:
                gone = True
                break
            if not woken:  # the interval's tick (or the first): in its turn; woken: at once
                await memo.pacer.turn()
                if stopped or uid in memo.deleted:
                    continue
            wake.clear()
            try:
                outcome = await memo.reconciler.tick(
                    namespace, name, cached=cached, seen=memo.wakeups.floor(namespace, name), hurry=wake
                )
                gone = outcome.gone
                cached = True
            except KubernetesError as exc:
                outcome = TickOutcome(interval=outcome.interval)
                logger.warning(kv("tick_failed", namespace=namespace, name=name, error=str(exc)))
            except Exception as exc:
                outcome = TickOutcome(interval=outcome.interval)
                logger.exception(kv("tick_failed", namespace=namespace, name=name, error=repr(exc)))
            if gone:
                break
            # The interval's answer (its next tick is due), a wake-up (a log line, an event), or
            # a stop. Daemons kopf starts together (the operator started, a takeover) tick at
            # the same moments from then on, a few per turn (pacer.py).
            woken = await memo.reconciler.until_due(outcome, wake)
    finally:
        stop_watcher.cancel()
        memo.running.discard(uid)
        memo.deleted.discard(uid)
        # A successor with the same name (deleted and recreated) may already run here: its
        # shared state is not this daemon's to drop.
        if memo.owners.get(key) == uid:
            del memo.owners[key]
            # Stopped for any reason (deleted, a peering pause, exiting): nothing to wake here,
            # its selector leaves the scope of the Prometheus queries, and its pods' logs are
            # followed no more.
            memo.rollouts.discard(key)
            memo.gateway.forget(key)
            memo.kube.forget_rollout(namespace, name)
            if gone or (stopped.reason is not None and kopf.DaemonStoppingReason.RESOURCE_DELETED in stopped.reason):
                memo.metrics.forget(namespace, name)
                memo.wakeups.drop(namespace, name)


def release_finalizers(registry: kopf.OperatorRegistry) -> list[str]:
    """Make the registry's daemons and timers need no finalizer; the ids of those changed.

    kopf marks every `@kopf.daemon`/`@kopf.timer` handler `requires_finalizer=True`, with no
    option to turn it off (kopf/on.py; nolar/kopf#833, the closed PR #896), and puts
    `settings.persistence.finalizer` on each object so that it can await its daemons' exit
    before the object goes. This operator's daemons own nothing outside their rollout that the
    garbage collector does not remove (preflight Jobs carry an ownerReference; Events expire;
    the Deployment's env is deliberately left as the last rung set it), so the finalizer only
    wedges deletion whenever the operator is not running: a `helm uninstall` followed by a
    namespace deletion left the namespace Terminating forever. With the flag off, kopf neither
    adds the finalizer nor keeps one an older version added: it removes it on the first event
    it sees (kopf/_core/reactor/processing.py, `process_resource_causes`).
    """
    spawning = registry._spawning
    changed = []
    for index, handler in enumerate(spawning._handlers):
        if handler.requires_finalizer:
            spawning._handlers[index] = dataclasses.replace(handler, requires_finalizer=False)
            changed.append(handler.id)
    return changed


# Import-time, right after the daemon is registered: before kopf sees any object.
release_finalizers(kopf.get_default_registry())
