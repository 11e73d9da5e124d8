"""kopf handlers: thin, module-level. `kopf run -m fillprob_operator.handlers`.

- startup: settings (finalizer and storages under `grinder.io`, peering, event posting),
  clients and the shared Prometheus gateway into `memo`, the metrics server;
- one daemon per FillProbRollout: every `spec.prometheus.interval`, or at once when woken,
  `Reconciler.tick` (observe -> decide -> execute);
- update handlers for `spec` and the `grinder.io/rollback` annotation only wake the daemon;
- the Alertmanager webhook receiver (FILLPROB_WEBHOOK_ADDR) queues alert rollbacks in the
  rollout's inbox and wakes its daemon;
- cleanup: close what startup opened.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from .adapters.clock import SystemClock
from .adapters.executor import Executor
from .adapters.kubernetes import GROUP, PLURAL, ROLLBACK_ANNOTATION, VERSION, KubernetesError, build_adapter
from .adapters.prometheus import PrometheusGateway, connect_prometheus
from .metrics import OperatorMetrics
from .reconciler import (
    DEFAULT_INTERVAL_SECONDS,
    DomainPort,
    Reconciler,
    RollbackInbox,
    Wakeups,
    kv,
)
from .settings import Settings
from .webhook import WebhookConfig, make_webhook_app, start_webhook_server

logger = logging.getLogger("fillprob_operator")

FINALIZER = "grinder.io/finalizer"
STORAGE_PREFIX = "grinder.io"


def configure(settings: kopf.OperatorSettings, config: Settings) -> None:
    settings.persistence.finalizer = FINALIZER
    # Handler progress and the last-handled spec in annotations under grinder.io, so that
    # `status` holds only the rollout's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
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
        pool_size=config.io_threads,
    )
    memo.gateway = PrometheusGateway(
        connect=connect or connect_prometheus(config.prometheus_timeout_seconds),
        lookback=config.prometheus_lookback,
        timeout=config.prometheus_timeout_seconds,
        executor=memo.io,
        metrics=memo.metrics,
        clock=clock,
    )
    memo.executor = Executor(memo.kube, memo.metrics, clock)
    memo.wakeups = Wakeups()
    # The seam for alert-driven rollback: the Alertmanager receiver puts RollbackRequests
    # here, per (namespace, name); the daemon drains them into `decide()`.
    memo.rollback_inbox = RollbackInbox(wake=memo.wakeups.wake)
    # (namespace, name) of the rollouts whose daemon runs here: the webhook accepts only those.
    memo.rollouts = set()
    memo.reconciler = Reconciler(
        kube=memo.kube,
        gateway=memo.gateway,
        executor=memo.executor,
        metrics=memo.metrics,
        clock=clock,
        domain=domain or DomainPort.load(),
        inbox=memo.rollback_inbox,
        default_prometheus_url=config.prometheus_url,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = Settings.from_env()
    configure(settings, config)
    build_runtime(memo, config)
    served = None
    if config.metrics_host_port is not None:
        served = memo.metrics.serve(*config.metrics_host_port)
    webhook = WebhookConfig.from_env()
    if webhook is not None:
        app = make_webhook_app(webhook.token_provider, functools.partial(submit_rollback, memo))
        memo.webhook_runner = await start_webhook_server(app, webhook.host, webhook.port)
    logger.info(kv(
        "startup", prometheus_url=config.prometheus_url, lookback=config.prometheus_lookback,
        metrics=f"{served[0]}:{served[1]}" if served else "off",
        webhook=f"{webhook.host}:{webhook.port}" if webhook else "off",
        namespaces=",".join(config.namespaces) or "*", peering=config.peering,
    ))


def submit_rollback(memo: Any, request: Any, namespace: str, name: str) -> bool:
    """The webhook's `submit`: queue for a rollout this operator runs; False for any other."""
    if (namespace, name) not in memo.rollouts:
        return False
    memo.rollback_inbox.put(namespace, name, request)
    return True


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if "webhook_runner" in memo:
        await memo.webhook_runner.cleanup()
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


async def wait_for_next_tick(stopped: Any, wake: asyncio.Event, timeout: float) -> None:
    """Until the interval passes, the daemon is woken, or it is told to stop."""

    async def until_stopped() -> None:
        await stopped.wait(timeout)

    waiters = [asyncio.ensure_future(until_stopped()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10.0)
async def rollout(namespace: str, name: str, memo: kopf.Memo, stopped: Any, **_: Any) -> None:
    """The rollout's loop: level-based, so a restart resumes from `status`."""
    wake = memo.wakeups.event(namespace, name)
    memo.rollouts.add((namespace, name))
    interval = DEFAULT_INTERVAL_SECONDS
    gone = False
    try:
        while not stopped:
            wake.clear()
            try:
                outcome = await memo.reconciler.tick(namespace, name)
                interval, gone = outcome.interval, outcome.gone
            except KubernetesError as exc:
                logger.warning(kv("tick_failed", namespace=namespace, name=name, error=str(exc)))
            except Exception as exc:
                logger.exception(kv("tick_failed", namespace=namespace, name=name, error=repr(exc)))
            if gone:
                break
            await wait_for_next_tick(stopped, wake, interval)
    finally:
        # Stopped for any reason (deleted, a peering pause, exiting): no more alerts for it here.
        memo.rollouts.discard((namespace, name))
        if gone or (stopped.reason is not None and kopf.DaemonStoppingReason.RESOURCE_DELETED in stopped.reason):
            memo.metrics.forget(namespace, name)
            memo.wakeups.drop(namespace, name)
            memo.rollback_inbox.drop(namespace, name)
