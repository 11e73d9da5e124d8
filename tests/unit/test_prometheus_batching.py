"""The gateway asks Prometheus once per metric per URL per evaluation interval.

200 rollouts evaluate in the same interval against a counting fake Prometheus; each gate
query is sent once, and every rollout still gets its own pods' series (split by the
namespace/pod labels).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from datetime import datetime, timedelta, timezone

from fillprob_operator.adapters.prometheus import PrometheusGateway, gate_queries
from fillprob_operator.domain.selector import default_selector, parse_selector
from fillprob_operator.metrics import OperatorMetrics

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)  # a multiple of 30s
N = 200


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.at = now

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.at.timestamp()


class CountingPrometheus:
    """A fake `PrometheusConnect`: one series per rollout pod per metric (and symbol)."""

    def __init__(self, url: str, calls: collections.Counter, release: threading.Event, fail: bool = False):
        self.url = url
        self.calls = calls
        self.release = release
        self.fail = fail

    def custom_query(self, query: str) -> list[dict]:
        self.calls[(self.url, query)] += 1
        # Held until the test has started every rollout: they all wait on this one query.
        assert self.release.wait(10), "test never released the fake"
        if self.fail:
            raise ConnectionError("connection refused")
        per_symbol = "blocks" in query or "orders" in query
        scrape_time = query == "timestamp(up)"
        result = []
        for i in range(N):
            labels = {"namespace": f"ns{i % 10}", "pod": f"grinder{i}-5d9c7b-x{i:04d}", "job": "kubernetes-pods"}
            symbols = ("SYM1", "SYM2") if per_symbol else (None,)
            for symbol in symbols:
                metric = {**labels, **({"symbol": symbol} if symbol else {})}
                value = T0.timestamp() - 3 if scrape_time else float(i)
                result.append({"metric": metric, "value": [T0.timestamp(), str(value)]})
        # a series of no rollout: another namespace's pod with a similar name
        result.append({"metric": {"namespace": "other", "pod": "grinder1-5d9c7b-zzzzz"}, "value": [T0.timestamp(), "7"]})
        return result


def make_gateway(calls, release, *, fail=False, clock=None, metrics=None):
    return PrometheusGateway(
        connect=lambda url: CountingPrometheus(url, calls, release, fail),
        lookback="1m",
        timeout=5,
        metrics=metrics,
        clock=clock or FixedClock(T0),
    )


async def evaluate_all(gateway, url, now, release):
    tasks = [
        asyncio.create_task(
            gateway.observe(url, 30, now, default_selector(f"ns{i % 10}", f"grinder{i}").matches)
        )
        for i in range(N)
    ]
    for _ in range(50):  # let every rollout reach the gateway before the fake answers
        await asyncio.sleep(0)
    release.set()
    return await asyncio.gather(*tasks)


def test_two_hundred_rollouts_cost_one_query_per_metric_per_interval():
    calls: collections.Counter = collections.Counter()
    release = threading.Event()
    metrics = OperatorMetrics()
    gateway = make_gateway(calls, release, metrics=metrics)
    url = "http://prometheus:9090"

    async def scenario():
        first = await evaluate_all(gateway, url, T0 + timedelta(seconds=1), release)
        # later in the same 30s bucket: served from the cache
        again = await asyncio.gather(*(
            gateway.observe(url, 30, T0 + timedelta(seconds=29), default_selector("ns0", "grinder0").matches)
            for _ in range(5)
        ))
        return first, again

    observations, again = asyncio.run(scenario())
    queries = set(gate_queries("1m").values())
    assert len(queries) == 9  # 8 gate queries + timestamp(up)
    assert calls == collections.Counter({(url, q): 1 for q in queries})
    assert metrics.registry.get_sample_value(
        "fillprob_rollout_prometheus_queries_total", {"url": url, "result": "ok"}) == 9
    assert metrics.registry.get_sample_value("fillprob_rollout_prometheus_query_seconds_count") == 9

    for i, obs in enumerate(observations):
        assert obs.available, obs.reason
        assert list(obs.pods) == [f"grinder{i}-5d9c7b-x{i:04d}"]
        pod = obs.pods[f"grinder{i}-5d9c7b-x{i:04d}"]
        assert pod.enforce_enabled == float(i)
        assert pod.circuit_breaker_trips == float(i)
        assert pod.blocks_by_symbol == {"SYM1": float(i), "SYM2": float(i)}
        assert pod.recent_orders_by_symbol == {"SYM1": float(i), "SYM2": float(i)}
        assert pod.sampled_at == T0 - timedelta(seconds=3)  # the scrape, not the evaluation, time
    assert all(o.pods == observations[0].pods for o in again)


def test_next_interval_and_other_url_query_again():
    calls: collections.Counter = collections.Counter()
    release = threading.Event()
    release.set()
    gateway = make_gateway(calls, release)
    matches = default_selector("ns0", "grinder0").matches

    async def scenario():
        await gateway.observe("http://a:9090", 30, T0, matches)
        await gateway.observe("http://a:9090", 30, T0 + timedelta(seconds=10), matches)
        await gateway.observe("http://b:9090", 30, T0 + timedelta(seconds=10), matches)
        await gateway.observe("http://a:9090", 30, T0 + timedelta(seconds=30), matches)
        # a late caller still in the previous bucket gets the newer answer, no new query
        await gateway.observe("http://a:9090", 30, T0 + timedelta(seconds=20), matches)

    asyncio.run(scenario())
    per_url = collections.Counter(url for url, _ in calls.elements())
    assert per_url == {"http://a:9090": 18, "http://b:9090": 9}


def test_unreachable_prometheus_is_no_data_and_is_asked_once_per_interval():
    calls: collections.Counter = collections.Counter()
    release = threading.Event()
    metrics = OperatorMetrics()
    gateway = make_gateway(calls, release, fail=True, metrics=metrics)

    observations = asyncio.run(evaluate_all(gateway, "http://down:9090", T0, release))
    assert {(o.available, o.reason) for o in observations} == {(False, "PrometheusUnreachable")}
    assert sum(calls.values()) == 9
    assert metrics.registry.get_sample_value(
        "fillprob_rollout_prometheus_queries_total", {"url": "http://down:9090", "result": "error"}) == 9


def test_no_series_for_the_pods_is_series_absent_not_zero():
    calls: collections.Counter = collections.Counter()
    release = threading.Event()
    release.set()
    gateway = make_gateway(calls, release)
    obs = asyncio.run(gateway.observe("http://a:9090", 30, T0, default_selector("ns0", "not-deployed").matches))
    assert (obs.available, obs.reason, dict(obs.pods)) == (False, "SeriesAbsent", {})


def test_custom_selector_splits_client_side():
    calls: collections.Counter = collections.Counter()
    release = threading.Event()
    release.set()
    gateway = make_gateway(calls, release)
    selector = parse_selector('namespace="ns3",pod=~"grinder(3|13)-.*"')
    obs = asyncio.run(gateway.observe("http://a:9090", 30, T0, selector.matches))
    assert sorted(obs.pods) == ["grinder13-5d9c7b-x0013", "grinder3-5d9c7b-x0003"]
    # the query itself carried no selector
    assert all("{" not in q for _, q in calls)
