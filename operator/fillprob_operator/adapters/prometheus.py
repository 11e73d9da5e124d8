"""The Prometheus adapter: one set of queries per Prometheus per evaluation interval.

However many FillProbRollouts there are, `PrometheusGateway` asks each Prometheus URL each
gate metric ONCE per evaluation-interval bucket (floor(now / interval)), with no per-rollout
selector, and caches the answer for that bucket; concurrent rollouts wait on the one
in-flight query (an asyncio lock per key). Each rollout then takes its own series out of the
shared answer with its selector (`matches(labels) -> bool`, see `domain.selector`), client-side.

Missing data is never a zero (API.md, Gates): unreachable / error / timeout gives
`available=False, reason="PrometheusUnreachable"`, no series for this rollout's pods gives
`available=False, reason="SeriesAbsent"`, and an absent series stays `None` in `PodMetrics`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import defaultdict
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol

from ..domain.observations import MetricsObservation, PodMetrics
from .clock import Clock, SystemClock

logger = logging.getLogger("fillprob_operator.prometheus")

Labels = Mapping[str, str]
Matcher = Callable[[Labels], bool]

UNREACHABLE = "PrometheusUnreachable"
SERIES_ABSENT = "SeriesAbsent"
SERIES_STALE = "SeriesStale"
_LOOKBACK_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def lookback_seconds(lookback: str) -> float:
    """`"10s"` / `"1m"` (Settings' FILLPROB_PROMETHEUS_LOOKBACK grammar) -> seconds."""
    number = lookback.rstrip("smhd")
    return float(number) * _LOOKBACK_UNITS[lookback[len(number):]]

# PodMetrics field -> PromQL (runbook 32, "Quick Reference: Metrics", plus the per-symbol
# order counter the block-ratio gate needs). `{lookback}` is the operator's lookback window.
GAUGES = {
    "enforce_enabled": "grinder_router_fill_prob_enforce_enabled",
    "allowlist_enabled": "grinder_router_fill_prob_enforce_allowlist_enabled",
    "auto_threshold_bps": "grinder_router_fill_prob_auto_threshold_bps",
}
COUNTERS = {
    "circuit_breaker_trips": "grinder_router_fill_prob_cb_trips_total",
}
PER_SYMBOL = {
    "blocks_by_symbol": "grinder_router_fill_prob_blocks_total",
    "orders_by_symbol": "grinder_router_orders_total",
    "recent_blocks_by_symbol": "increase(grinder_router_fill_prob_blocks_total[{lookback}])",
    "recent_orders_by_symbol": "increase(grinder_router_orders_total[{lookback}])",
}
# Not a gate metric: which pods Prometheus scrapes now, and when it last did. A pod that is
# gone (an old ReplicaSet's) has no `up` any more, but `increase(...[L])` still returns its
# series for L: those are dropped, so the window gates see live pods only. The value is
# the scrape time, which `fillprob_rollout_detection_seconds` is measured from (an instant
# query's own sample timestamp is the evaluation time).
SCRAPED_AT = {"scraped_at": "timestamp(up)"}
RECENT = {"recent_blocks_by_symbol", "recent_orders_by_symbol"}


def gate_queries(lookback: str) -> dict[str, str]:
    every = {**SCRAPED_AT, **GAUGES, **COUNTERS, **PER_SYMBOL}
    return {key: q.format(lookback=lookback) for key, q in every.items()}


class QueryClient(Protocol):
    def custom_query(self, query: str) -> list[dict[str, Any]]:
        """An instant query; raises on connection errors and non-200 answers."""


@dataclass(frozen=True)
class Sample:
    labels: Labels
    timestamp: float
    value: float


@dataclass(frozen=True)
class Snapshot:
    """The answers to all gate queries for one (url, interval bucket); results None = failed."""

    queried_at: datetime
    results: Mapping[str, tuple[Sample, ...]] | None
    error: str = ""


def parse_result(result: list[dict[str, Any]]) -> tuple[Sample, ...]:
    samples = []
    for series in result:
        try:
            ts, raw = series["value"]
            value = float(raw)
        except (KeyError, TypeError, ValueError):
            continue
        if math.isnan(value) or math.isinf(value):
            continue  # not a number is no data, not a zero
        samples.append(Sample(labels=dict(series.get("metric") or {}), timestamp=float(ts), value=value))
    return tuple(samples)


def split_by_pod(results: Mapping[str, tuple[Sample, ...]], matches: Matcher) -> dict[str, PodMetrics]:
    """This rollout's share of the shared answers, one `PodMetrics` per live pod.

    Gauges take the highest value when a pod has several series (two scrape jobs),
    counters are summed; per-symbol counters need a `symbol` label. Live pods are those
    with an `up` series (or, where `up` is not available, any instant series).
    """
    fields: dict[str, dict[str, Any]] = defaultdict(dict)
    scraped: dict[str, float] = {}
    instant: dict[str, float] = {}
    for key, samples in results.items():
        for sample in samples:
            if not matches(sample.labels):
                continue
            pod = sample.labels.get("pod") or sample.labels.get("instance") or ""
            if key in SCRAPED_AT:
                scraped[pod] = max(scraped.get(pod, 0.0), sample.value)
                continue
            if key not in RECENT:
                instant[pod] = max(instant.get(pod, 0.0), sample.timestamp)
            pod_fields = fields[pod]
            if key in GAUGES:
                old = pod_fields.get(key)
                pod_fields[key] = sample.value if old is None else max(old, sample.value)
            elif key in COUNTERS:
                pod_fields[key] = pod_fields.get(key, 0.0) + sample.value
            elif key in PER_SYMBOL:
                symbol = sample.labels.get("symbol")
                if symbol:
                    by_symbol = pod_fields.setdefault(key, {})
                    by_symbol[symbol] = by_symbol.get(symbol, 0.0) + sample.value
    live = scraped or instant
    return {
        pod: PodMetrics(
            pod=pod,
            sampled_at=datetime.fromtimestamp(live[pod], tz=timezone.utc),
            **fields.get(pod, {}),
        )
        for pod in sorted(live)
    }


def has_data(pod: PodMetrics) -> bool:
    return any(
        value is not None
        for value in (pod.enforce_enabled, pod.allowlist_enabled, pod.auto_threshold_bps,
                      pod.circuit_breaker_trips)
    ) or bool(pod.blocks_by_symbol or pod.orders_by_symbol)


class PrometheusGateway:
    """Shared by all rollouts (kept in kopf `memo`)."""

    def __init__(
        self,
        *,
        connect: Callable[[str], QueryClient],
        lookback: str = "1m",
        timeout: float = 10.0,
        executor: Executor | None = None,
        metrics: Any = None,
        clock: Clock | None = None,
    ) -> None:
        self._connect = connect
        self._queries = gate_queries(lookback)
        self._lookback_seconds = lookback_seconds(lookback)
        self._timeout = timeout
        self._executor = executor
        self._metrics = metrics
        self._clock = clock or SystemClock()
        self._clients: dict[str, QueryClient] = {}
        self._snapshots: dict[tuple[str, float], tuple[int, Snapshot]] = {}
        self._locks: dict[tuple[str, float, int], asyncio.Lock] = {}

    @property
    def queries(self) -> Mapping[str, str]:
        return dict(self._queries)

    def close(self) -> None:
        for client in self._clients.values():
            close = getattr(client, "close", None)
            if close is not None:
                close()
        self._clients.clear()

    async def snapshot(self, url: str, interval_seconds: float, now: datetime) -> Snapshot:
        interval = max(1.0, float(interval_seconds))
        bucket = math.floor(now.timestamp() / interval)
        cached = self._cached(url, interval, bucket)
        if cached is not None:
            return cached
        lock = self._locks.setdefault((url, interval, bucket), asyncio.Lock())
        async with lock:
            cached = self._cached(url, interval, bucket)
            if cached is not None:
                return cached
            snapshot = await self._fetch(url)
            self._snapshots[(url, interval)] = (bucket, snapshot)
        for key in [k for k in self._locks if k[:2] == (url, interval) and k[2] < bucket]:
            del self._locks[key]
        return snapshot

    def _cached(self, url: str, interval: float, bucket: int) -> Snapshot | None:
        stored = self._snapshots.get((url, interval))
        # A newer bucket's answer serves a late caller too: newer data is never worse.
        return stored[1] if stored is not None and stored[0] >= bucket else None

    async def observe(
        self, url: str, interval_seconds: float, now: datetime, matches: Matcher
    ) -> MetricsObservation:
        snapshot = await self.snapshot(url, interval_seconds, now)
        if snapshot.results is None:
            return MetricsObservation(available=False, reason=UNREACHABLE, queried_at=snapshot.queried_at)
        pods = split_by_pod(snapshot.results, matches)
        # A restarted Prometheus answers with the samples it had before it stopped (no
        # staleness markers are written at shutdown) until it scrapes again: a pod whose
        # newest scrape is older than the lookback (or three intervals) is not data now.
        fresh_after = snapshot.queried_at.timestamp() - max(self._lookback_seconds, 3 * float(interval_seconds))
        stale = {name: p.sampled_at.timestamp() for name, p in pods.items()
                 if p.sampled_at is not None and p.sampled_at.timestamp() < fresh_after}
        pods = {name: p for name, p in pods.items() if name not in stale}
        if not any(has_data(p) for p in pods.values()):  # scraped, but no gate series (yet)
            reason = SERIES_ABSENT
            if stale:
                age = snapshot.queried_at.timestamp() - max(stale.values())
                reason = f"{SERIES_STALE}: the pods' newest scrape is {age:.0f}s old"
            return MetricsObservation(available=False, reason=reason, queried_at=snapshot.queried_at)
        return MetricsObservation(available=True, pods=pods, queried_at=snapshot.queried_at)

    def _client(self, url: str) -> QueryClient:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = self._connect(url)
        return client

    async def _fetch(self, url: str) -> Snapshot:
        try:
            client = self._client(url)
        except Exception as exc:  # a malformed URL: as unreachable as a dead server
            return Snapshot(queried_at=self._clock.now(), results=None, error=str(exc))
        answers = await asyncio.gather(
            *(self._query(url, client, key, q) for key, q in self._queries.items())
        )
        queried_at = self._clock.now()
        errors = [err for _, _, err in answers if err]
        if errors:
            logger.warning("event=prometheus_unreachable url=%s error=%r", url, errors[0])
            return Snapshot(queried_at=queried_at, results=None, error=errors[0])
        return Snapshot(queried_at=queried_at, results={key: samples for key, samples, _ in answers})

    async def _query(
        self, url: str, client: QueryClient, key: str, query: str
    ) -> tuple[str, tuple[Sample, ...], str]:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        result = "ok"
        try:
            raw = await asyncio.wait_for(
                loop.run_in_executor(self._executor, functools.partial(client.custom_query, query)),
                self._timeout + 2,
            )
            return key, parse_result(raw), ""
        except asyncio.TimeoutError:
            result = "timeout"
            return key, (), f"{query}: timed out after {self._timeout}s"
        except Exception as exc:
            result = "timeout" if "timed out" in str(exc).lower() else "error"
            return key, (), f"{query}: {type(exc).__name__}: {exc}"
        finally:
            if self._metrics is not None:
                self._metrics.prometheus_queries.labels(url, result).inc()
                self._metrics.prometheus_query_seconds.observe(time.monotonic() - started)


def connect_prometheus(timeout: float) -> Callable[[str], QueryClient]:
    """`PrometheusConnect` per URL: TLS not verified (in-cluster Prometheus often uses
    self-signed certificates), a request timeout, no retries (the next interval retries)."""
    from prometheus_api_client import PrometheusConnect
    from urllib3.util.retry import Retry

    def connect(url: str) -> QueryClient:
        return PrometheusConnect(url=url, disable_ssl=True, timeout=timeout, retry=Retry(total=0))

    return connect
