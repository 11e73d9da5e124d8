"""The Prometheus adapter: one set of queries per Prometheus per evaluation interval.

However many FillProbRollouts there are, `PrometheusGateway` asks each Prometheus URL each
gate metric ONCE per evaluation-interval bucket (floor(now / interval)) and caches the answer
for that bucket; concurrent rollouts wait on the one in-flight query (an asyncio lock per key).
Each query is scoped to the union of the selectors of the rollouts registered for that URL and
interval (`prometheus_scope`): every rollout registers its selector at each tick (`observe`)
and is forgotten when its daemon stops (`forget`) or after FORGET_AFTER_INTERVALS without one.
A rollout whose selector the bucket's answer does not cover (new, or its selector changed)
gets a top-up: the same queries, scoped to the selectors not covered yet, once for all of
those waiting; the answer of the next bucket covers it with the others.

The answer is split once, for every rollout it covers, off the event loop (`split`: an index by
the `namespace` and `pod` labels built in one pass, `SeriesIndex`, then each selector's share
looked up in it, matched as Prometheus matches, see `domain.selector`); on the loop a rollout
only takes its share (issue 10: 300 rollouts each scanning a 60k-sample answer held the loop).

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
from typing import Any, Callable, Hashable, Iterable, Mapping, NamedTuple, Protocol

from ..domain.observations import MetricsObservation, PodMetrics
from ..domain.selector import MatchOp, Selector, deployment_of
from .clock import Clock, SystemClock
from .prometheus_scope import Scope, query_scope

logger = logging.getLogger("fillprob_operator.prometheus")

Labels = Mapping[str, str]
Matcher = Callable[[Labels], bool]

UNREACHABLE = "PrometheusUnreachable"
SERIES_ABSENT = "SeriesAbsent"
SERIES_STALE = "SeriesStale"
_LOOKBACK_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# A rollout that has not observed for this many of its intervals is no longer in the scope
# (its daemon stopped without `forget`, e.g. on another replica after a peering change).
FORGET_AFTER_INTERVALS = 3


def lookback_seconds(lookback: str) -> float:
    """`"10s"` / `"1m"` (Settings' FILLPROB_PROMETHEUS_LOOKBACK grammar) -> seconds."""
    number = lookback.rstrip("smhd")
    return float(number) * _LOOKBACK_UNITS[lookback[len(number):]]

# PodMetrics field -> PromQL (runbook 32, "Quick Reference: Metrics", plus the per-symbol
# order counter the block-ratio gate needs). `{lookback}` is the operator's lookback window,
# `{scope}` the matchers of the rollouts' selectors (prometheus_scope).
GAUGES = {
    "enforce_enabled": "grinder_router_fill_prob_enforce_enabled{scope}",
    "allowlist_enabled": "grinder_router_fill_prob_enforce_allowlist_enabled{scope}",
    "auto_threshold_bps": "grinder_router_fill_prob_auto_threshold_bps{scope}",
}
COUNTERS = {
    "circuit_breaker_trips": "grinder_router_fill_prob_cb_trips_total{scope}",
}
PER_SYMBOL = {
    "blocks_by_symbol": "grinder_router_fill_prob_blocks_total{scope}",
    "orders_by_symbol": "grinder_router_orders_total{scope}",
    "recent_blocks_by_symbol": "increase(grinder_router_fill_prob_blocks_total{scope}[{lookback}])",
    "recent_orders_by_symbol": "increase(grinder_router_orders_total{scope}[{lookback}])",
}
# Not a gate metric: which pods Prometheus scrapes now, and when it last did. A pod that is
# gone (an old ReplicaSet's) has no `up` any more, but `increase(...[L])` still returns its
# series for L: those are dropped, so the window gates see live pods only. The value is
# the scrape time, which `fillprob_rollout_detection_seconds` is measured from (an instant
# query's own sample timestamp is the evaluation time).
SCRAPED_AT = {"scraped_at": "timestamp(up{scope})"}
RECENT = {"recent_blocks_by_symbol", "recent_orders_by_symbol"}
# Every query, in the order they are sent: answer key -> template.
TEMPLATES = {**SCRAPED_AT, **GAUGES, **COUNTERS, **PER_SYMBOL}


def gate_queries(lookback: str, scope: Scope) -> dict[str, str]:
    """The gate queries for these selectors' series: `{}` when there is nothing to ask."""
    if not scope.arms:
        return {}
    return {key: scope.query(q, lookback=lookback) for key, q in TEMPLATES.items()}


@functools.lru_cache(maxsize=32)
def scoped_queries(lookback: str, selectors: frozenset[Selector]) -> Mapping[str, str]:
    """`gate_queries` for these selectors' union (tens of ms for 300 rollouts; cached, as the
    set is the same interval after interval)."""
    return gate_queries(lookback, query_scope(selectors))


class QueryClient(Protocol):
    def custom_query(self, query: str) -> list[dict[str, Any]]:
        """An instant query; raises on connection errors and non-200 answers."""


class Sample(NamedTuple):
    """One series of an answer. A tuple, not a dataclass: the garbage collector stops
    tracking a tuple of untracked values (a dict of strings, floats), and an answer has tens
    of thousands of them."""

    labels: Labels
    timestamp: float
    value: float


@dataclass(frozen=True)
class Snapshot:
    """The answers to all gate queries for one (url, interval bucket), split: each covered
    selector's pods (`split`); None = failed. The samples themselves are not kept: tens of
    thousands of objects that every full garbage collection would walk, holding the GIL.

    `covered`: the selectors whose every series the queries' scope holds (a failed answer
    covers them too: they are unreachable until the next bucket, not asked again)."""

    queried_at: datetime
    shares: Mapping[Selector, dict[str, PodMetrics]] | None
    error: str = ""
    covered: frozenset[Selector] = frozenset()


def _bucket(interval_seconds: float, now: datetime) -> tuple[float, int]:
    """(interval, the number of the interval `now` is in): one answer per bucket and URL."""
    interval = max(1.0, float(interval_seconds))
    return interval, math.floor(now.timestamp() / interval)


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
        samples.append(Sample(labels=series.get("metric") or {}, timestamp=float(ts), value=value))
    return tuple(samples)


def split_by_pod(results: Mapping[str, tuple[Sample, ...]], matches: Matcher) -> dict[str, PodMetrics]:
    """This rollout's share of the shared answers, by scanning all of them (`SeriesIndex.share`
    gives the same by looking up)."""
    return pods_from((key, s) for key, samples in results.items() for s in samples if matches(s.labels))


def pods_from(series: Iterable[tuple[str, Sample]]) -> dict[str, PodMetrics]:
    """One `PodMetrics` per live pod, from one rollout's (query key, sample) pairs.

    Gauges take the highest value when a pod has several series (two scrape jobs),
    counters are summed; per-symbol counters need a `symbol` label. Live pods are those
    with an `up` series (or, where `up` is not available, any instant series).
    """
    fields: dict[str, dict[str, Any]] = defaultdict(dict)
    scraped: dict[str, float] = {}
    instant: dict[str, float] = {}
    for key, sample in series:
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


class SeriesIndex:
    """The shared answer grouped by its `namespace` and `pod` labels (a missing label is "",
    as matchers read it), built in one pass over it, once per answer, off the event loop.

    A rollout's share is looked up: the namespaces its selector's namespace matchers admit
    (`=`: one lookup), in each the pods its pod matchers admit (`=`: one lookup; the default
    selector's `pod=~"<deployment>-[a-z0-9]+-[a-z0-9]+"`: one lookup by Deployment; other
    selectors: a test of each pod name, never of each sample). Every series of such a
    (namespace, pod) group has those two labels, so the namespace and pod matchers hold for all
    of them; only the selector's other matchers (none for the default selector) are checked
    series by series. The share is therefore `split_by_pod`'s, summed in the same order (the
    answer's).
    """

    def __init__(self, results: Mapping[str, tuple[Sample, ...]]) -> None:
        series: dict[tuple[str, str], list[tuple[int, str, Sample]]] = defaultdict(list)
        position = 0
        for key, samples in results.items():
            for sample in samples:
                labels = sample.labels
                series[(labels.get("namespace", ""), labels.get("pod", ""))].append((position, key, sample))
                position += 1
        pods: dict[str, list[str]] = defaultdict(list)
        deployments: dict[tuple[str, str], list[str]] = defaultdict(list)
        for namespace, pod in series:
            pods[namespace].append(pod)
            parts = pod.rsplit("-", 2)
            if len(parts) == 3:
                deployments[(namespace, parts[0])].append(pod)
        self._series, self._pods, self._deployments = dict(series), dict(pods), dict(deployments)

    def share(self, selector: Selector) -> dict[str, PodMetrics]:
        rest = [m for m in selector.matchers if m.label not in ("namespace", "pod")]
        found = [
            entry
            for namespace in self._namespaces(selector)
            for pod in self._pods_of(selector, namespace)
            for entry in self._series[(namespace, pod)]
            if all(m.matches(entry[2].labels) for m in rest)
        ]
        found.sort(key=lambda entry: entry[0])
        return pods_from((key, sample) for _, key, sample in found)

    def _namespaces(self, selector: Selector) -> list[str]:
        on = [m for m in selector.matchers if m.label == "namespace"]
        equal = next((m.value for m in on if m.op is MatchOp.EQUAL), None)
        if equal is not None:
            candidates = [equal] if equal in self._pods else []
        else:
            candidates = list(self._pods)
        return [n for n in candidates if all(m.matches({"namespace": n}) for m in on)]

    def _pods_of(self, selector: Selector, namespace: str) -> list[str]:
        on = [m for m in selector.matchers if m.label == "pod"]
        equal = next((m.value for m in on if m.op is MatchOp.EQUAL), None)
        deployment = next(
            (d for m in on if m.op is MatchOp.REGEX and (d := deployment_of(m.value)) is not None), None
        )
        if equal is not None:
            candidates = [equal] if (namespace, equal) in self._series else []
        elif deployment is not None:
            candidates = self._deployments.get((namespace, deployment), [])
        else:
            candidates = self._pods[namespace]
        return [p for p in candidates if all(m.matches({"pod": p}) for m in on)]


def split(results: Mapping[str, tuple[Sample, ...]], selectors: Iterable[Selector]) -> dict[Selector, dict[str, PodMetrics]]:
    """Each selector's share of one answer: indexed once, then looked up (run in the executor)."""
    index = SeriesIndex(results)
    return {selector: index.share(selector) for selector in selectors}


@dataclass(frozen=True)
class _Registration:
    url: str
    interval: float
    selector: Selector
    at: datetime


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
        self._lookback = lookback
        self._lookback_seconds = lookback_seconds(lookback)
        self._timeout = timeout
        self._executor = executor
        self._metrics = metrics
        self._clock = clock or SystemClock()
        self._clients: dict[str, QueryClient] = {}
        # (url, interval) -> (bucket, the answers of that bucket, the first and its top-ups)
        self._snapshots: dict[tuple[str, float], tuple[int, tuple[Snapshot, ...]]] = {}
        self._locks: dict[tuple[str, float, int], asyncio.Lock] = {}
        self._registered: dict[Hashable, _Registration] = {}
        # Fetches no tick waits for (`snapshot`, `answer`), each with its (url, interval, bucket).
        self._behind: dict[asyncio.Task[Snapshot], tuple[str, float, int]] = {}
        # (url, interval) -> (bucket, future) of the daemons waiting for that bucket's answer.
        self._awaited: dict[tuple[str, float], list[tuple[int, asyncio.Future[None]]]] = {}

    def close(self) -> None:
        for task in list(self._behind):
            task.cancel()
        for client in self._clients.values():
            close = getattr(client, "close", None)
            if close is not None:
                close()
        self._clients.clear()

    def forget(self, rollout: Hashable) -> None:
        """The rollout's daemon stopped: its selector leaves the scope of the next queries."""
        self._registered.pop(rollout, None)

    def scope(self, url: str, interval_seconds: float, now: datetime) -> Scope:
        """The scope the next bucket's queries for (url, interval) would have."""
        return query_scope(self._selectors(url, max(1.0, float(interval_seconds)), now))

    def _selectors(self, url: str, interval: float, now: datetime) -> set[Selector]:
        """The selectors registered for (url, interval); registrations too old are forgotten."""
        for rollout, seen in list(self._registered.items()):
            if (now - seen.at).total_seconds() > FORGET_AFTER_INTERVALS * seen.interval:
                del self._registered[rollout]
        return {r.selector for r in self._registered.values() if (r.url, r.interval) == (url, interval)}

    async def snapshot(
        self, url: str, interval_seconds: float, now: datetime, selector: Selector, *, wait: bool = True
    ) -> Snapshot:
        """The bucket's answer that covers `selector` (registered or not).

        `wait=False`: if that answer is not here yet, the newest one here that covers `selector`
        (an earlier bucket's) at once, while this bucket's is fetched behind it; waits only when
        there is none. For a tick that must not wait on Prometheus (reconciler.py: a circuit-
        breaker line decides without it); the answer's own times still say how old it is."""
        interval, bucket = _bucket(interval_seconds, now)
        cached = self._cached(url, interval, bucket, selector)
        if cached is not None:
            return cached
        if not wait and (newest := self._cached(url, interval, None, selector)) is not None:
            self._fetch_behind(url, interval, now, selector, bucket)
            return newest
        lock = self._locks.setdefault((url, interval, bucket), asyncio.Lock())
        async with lock:
            cached = self._cached(url, interval, bucket, selector)
            if cached is not None:
                return cached
            stored = self._snapshots.get((url, interval))
            wanted = self._selectors(url, interval, now) | {selector}
            if stored is not None and stored[0] >= bucket:  # a top-up: only what is not covered
                wanted -= frozenset().union(*(s.covered for s in stored[1]))
            snapshot = await self._fetch(url, frozenset(wanted))
            stored = self._snapshots.get((url, interval))
            if stored is None or stored[0] < bucket:
                self._snapshots[(url, interval)] = (bucket, (snapshot,))
            else:
                self._snapshots[(url, interval)] = (stored[0], stored[1] + (snapshot,))
            self._arrived(url, interval, self._snapshots[(url, interval)][0])
        for key in [k for k in self._locks if k[:2] == (url, interval) and k[2] < bucket]:
            del self._locks[key]
        return snapshot

    def answer(
        self, url: str, interval_seconds: float, now: datetime, selector: Selector, *, limit: float
    ) -> asyncio.Future[None]:
        """Done when `now`'s bucket has its answer here (at once if one covering `selector` is),
        or after `limit` seconds, whichever comes first; the bucket's fetch is started if none
        is under way. Never fails. For a daemon whose interval tick waits for its interval's
        answer rather than for Prometheus inside the tick (handlers.py, `Reconciler.until_due`):
        the rollouts of a URL then decide as soon as the answer is here, and hold nothing while
        it is fetched. An answer that does not cover `selector` (it was not registered when the
        fetch began) ends the wait too: the tick asks for its top-up itself."""
        interval, bucket = _bucket(interval_seconds, now)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self._cached(url, interval, bucket, selector) is not None:
            future.set_result(None)
            return future
        self._fetch_behind(url, interval, now, selector, bucket)
        entry = (bucket, future)
        self._awaited.setdefault((url, interval), []).append(entry)
        timer = loop.call_later(max(0.0, limit), self._gave_up, (url, interval), entry)
        future.add_done_callback(lambda _: timer.cancel())
        return future

    def _gave_up(self, key: tuple[str, float], entry: tuple[int, asyncio.Future[None]]) -> None:
        """A wait reached its limit: it ends, and leaves the list (a fetch that never stores an
        answer must not grow it interval after interval)."""
        _resolve(entry[1])
        waiting = self._awaited.get(key)
        if waiting is not None and entry in waiting:
            waiting.remove(entry)
            if not waiting:
                del self._awaited[key]

    def _arrived(self, url: str, interval: float, bucket: int) -> None:
        """An answer of `bucket` is stored: the daemons waiting for it or an older one go on."""
        waiting = self._awaited.pop((url, interval), [])
        later = [(b, future) for b, future in waiting if b > bucket and not future.done()]
        for b, future in waiting:
            if b <= bucket:
                _resolve(future)
        if later:
            self._awaited[(url, interval)] = later

    def answered(self, url: str, interval_seconds: float, now: datetime, selector: Selector) -> bool:
        """Whether `snapshot` would answer at once: this bucket's answer covering `selector` is
        here (a caller that may be hurried waits on it only when it is not)."""
        return self._cached(url, *_bucket(interval_seconds, now), selector) is not None

    def _cached(self, url: str, interval: float, bucket: int | None, selector: Selector) -> Snapshot | None:
        """The answer of `bucket` or a newer one (None: of any bucket) that covers `selector`."""
        stored = self._snapshots.get((url, interval))
        # A newer bucket's answer serves a late caller too: newer data is never worse.
        if stored is None or (bucket is not None and stored[0] < bucket):
            return None
        return next((s for s in reversed(stored[1]) if selector in s.covered), None)

    def _fetch_behind(self, url: str, interval: float, now: datetime, selector: Selector, bucket: int) -> None:
        """This bucket's answer fetched in a task of its own, unless a fetch of it is under way
        (or a task for it is started and has not taken the lock yet: 300 daemons asking in one
        turn start one)."""
        key = (url, interval, bucket)
        lock = self._locks.get(key)
        if (lock is not None and lock.locked()) or key in self._behind.values():
            return
        task = asyncio.get_running_loop().create_task(self.snapshot(url, interval, now, selector))
        self._behind[task] = key
        task.add_done_callback(self._fetched_behind)

    def _fetched_behind(self, task: asyncio.Task[Snapshot]) -> None:
        self._behind.pop(task, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("event=prometheus_fetch_failed error=%r", exc)

    async def observe(
        self, url: str, interval_seconds: float, now: datetime, selector: Selector, *, rollout: Hashable,
        wait: bool = True,
    ) -> MetricsObservation:
        """This rollout's pods as Prometheus sees them now; registers (or refreshes) its
        selector in the scope of the queries for `url` at this interval. `wait`: `snapshot`."""
        interval = max(1.0, float(interval_seconds))
        self._registered[rollout] = _Registration(url, interval, selector, now)
        snapshot = await self.snapshot(url, interval, now, selector, wait=wait)
        if snapshot.shares is None:
            return MetricsObservation(available=False, reason=UNREACHABLE, queried_at=snapshot.queried_at)
        pods = snapshot.shares[selector]
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

    async def _fetch(self, url: str, selectors: frozenset[Selector]) -> Snapshot:
        loop = asyncio.get_running_loop()
        queries = await loop.run_in_executor(self._executor, scoped_queries, self._lookback, selectors)
        try:
            client = self._client(url)
        except Exception as exc:  # a malformed URL: as unreachable as a dead server
            return Snapshot(queried_at=self._clock.now(), shares=None, error=str(exc), covered=selectors)
        answers = await asyncio.gather(*(self._query(url, client, key, q) for key, q in queries.items()))
        queried_at = self._clock.now()
        errors = [err for _, _, err in answers if err]
        if errors:
            logger.warning("event=prometheus_unreachable url=%s error=%r", url, errors[0])
            return Snapshot(queried_at=queried_at, shares=None, error=errors[0], covered=selectors)
        results = {key: samples for key, samples, _ in answers}
        # Split for every rollout at once, off the event loop: on it, 300 rollouts resuming
        # together on one answer would each hold the loop for their share in turn.
        shares = await loop.run_in_executor(self._executor, split, results, selectors)
        return Snapshot(queried_at=queried_at, shares=shares, covered=selectors)

    async def _query(
        self, url: str, client: QueryClient, key: str, query: str
    ) -> tuple[str, tuple[Sample, ...], str]:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        result = "ok"
        try:
            # Parsed in the executor too: a large answer is no work for the event loop.
            samples = await asyncio.wait_for(
                loop.run_in_executor(self._executor, lambda: parse_result(client.custom_query(query))),
                self._timeout + 2,
            )
            if self._metrics is not None:
                self._metrics.prometheus_samples.labels(url).inc(len(samples))
            return key, samples, ""
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


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def connect_prometheus(timeout: float, pool_size: int = 10) -> Callable[[str], QueryClient]:
    """`PrometheusConnect` per URL: TLS not verified (in-cluster Prometheus often uses
    self-signed certificates), a request timeout, no retries (the next interval retries), and
    `pool_size` kept-alive connections per URL: the I/O pool's threads can all be querying one
    Prometheus at once (a slow one's queries overlap the next interval's), and with the
    library's default of 10 every connection past it was closed after one request
    ("Connection pool is full, discarding connection", 300 times in a bench at N=300).

    Two costs of every query are gone (issue 10; about a quarter less of the client's CPU per
    query, `docs/performance.md`): the environment's proxies for this URL (`HTTP_PROXY`,
    `HTTPS_PROXY`, `NO_PROXY`) and its `~/.netrc` credentials are read once, at connect (requests
    looks them up again at each request while `trust_env` is on); and the answers come
    uncompressed (`Accept-Encoding: identity`): gzip saved bytes on the wire, not work, and
    decompressing took a fifth of the client's CPU per query."""
    from prometheus_api_client import PrometheusConnect
    from requests import Session
    from requests.adapters import HTTPAdapter
    from requests.utils import get_environ_proxies, get_netrc_auth
    from urllib3.util.retry import Retry

    def connect(url: str) -> QueryClient:
        session = Session()
        session.verify = False
        session.proxies.update(get_environ_proxies(url))
        session.auth = get_netrc_auth(url)
        session.trust_env = False
        session.headers["Accept-Encoding"] = "identity"
        client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout, retry=Retry(total=0), session=session)
        # PrometheusConnect mounts its own adapter (pool of 10) on `url`; this one replaces it.
        session.mount(url, HTTPAdapter(max_retries=Retry(total=0), pool_connections=1, pool_maxsize=pool_size))
        return client

    return connect
