"""The gateway asks Prometheus once per metric per URL per evaluation interval.

200 rollouts evaluate in the same interval against a counting fake Prometheus that answers
as Prometheus would (only the series the query's matchers match); each gate query is sent
once, scoped to the rollouts' selectors, and every rollout still gets its own pods' series.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from promql_reading import in_answer, read_query

from fillprob_operator.adapters.prometheus import FORGET_AFTER_INTERVALS, PrometheusGateway
from fillprob_operator.domain.selector import default_selector, parse_selector
from fillprob_operator.metrics import OperatorMetrics

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)  # a multiple of 30s
N = 200
URL = "http://prometheus:9090"
BASES = {
    "timestamp(up)",
    "grinder_router_fill_prob_enforce_enabled",
    "grinder_router_fill_prob_enforce_allowlist_enabled",
    "grinder_router_fill_prob_auto_threshold_bps",
    "grinder_router_fill_prob_cb_trips_total",
    "grinder_router_fill_prob_blocks_total",
    "grinder_router_orders_total",
    "increase(grinder_router_fill_prob_blocks_total[1m])",
    "increase(grinder_router_orders_total[1m])",
}


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.at = now

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.at.timestamp()


class Counted:
    """What the fakes share: queries sent per (url, query without matchers), the queries
    themselves, and switches."""

    def __init__(self) -> None:
        self.calls: collections.Counter = collections.Counter()
        self.sent: list[str] = []
        self.release = threading.Event()
        self.release.set()
        self.fail = False


class CountingPrometheus:
    """A fake `PrometheusConnect`: one series per rollout pod per metric (and symbol), and
    other targets' series; answers with those the query's matchers match."""

    def __init__(self, url: str, counted: Counted):
        self.url = url
        self.counted = counted

    def custom_query(self, query: str) -> list[dict]:
        base, arms = read_query(query)
        self.counted.calls[(self.url, base)] += 1
        self.counted.sent.append(query)
        # Held until the test has started every rollout: they all wait on this one query.
        assert self.counted.release.wait(10), "test never released the fake"
        if self.counted.fail:
            raise ConnectionError("connection refused")
        per_symbol = "blocks" in base or "orders" in base
        scrape_time = base == "timestamp(up)"
        result = []
        for i in range(N):
            labels = {"namespace": f"ns{i % 10}", "pod": f"grinder{i}-5d9c7b-x{i:04d}", "job": "kubernetes-pods"}
            symbols = ("SYM1", "SYM2") if per_symbol else (None,)
            for symbol in symbols:
                metric = {**labels, **({"symbol": symbol} if symbol else {})}
                value = T0.timestamp() - 3 if scrape_time else float(i)
                result.append({"metric": metric, "value": [T0.timestamp(), str(value)]})
        # series of no rollout: another namespace's pod with a similar name, another target
        result.append({"metric": {"namespace": "other", "pod": "grinder1-5d9c7b-zzzzz"}, "value": [T0.timestamp(), "7"]})
        result.append({"metric": {"namespace": "kube-system", "pod": "coredns-5d9c7b-aaaaa"}, "value": [T0.timestamp(), "1"]})
        return [series for series in result if in_answer(arms, series["metric"])]


def make_gateway(counted, *, clock=None, metrics=None, executor=None):
    return PrometheusGateway(
        connect=lambda url: CountingPrometheus(url, counted),
        lookback="1m",
        timeout=5,
        executor=executor,
        metrics=metrics,
        clock=clock or FixedClock(T0),
    )


def selector(i: int):
    return default_selector(f"ns{i % 10}", f"grinder{i}")


def pod(i: int) -> str:
    return f"grinder{i}-5d9c7b-x{i:04d}"


async def evaluate_all(gateway, url, now, counted, rollouts=range(N)):
    counted.release.clear()
    tasks = [
        asyncio.create_task(gateway.observe(url, 30, now, selector(i), rollout=("r", i)))
        for i in rollouts
    ]
    for _ in range(50):  # let every rollout reach the gateway before the fake answers
        await asyncio.sleep(0)
    counted.release.set()
    return await asyncio.gather(*tasks)


def test_two_hundred_rollouts_cost_one_query_per_metric_per_interval():
    counted = Counted()
    metrics = OperatorMetrics()
    gateway = make_gateway(counted, metrics=metrics)

    async def scenario():
        # The first interval: the first rollout's queries, then ONE top-up for the 199 that
        # registered meanwhile (the operator has just started: nobody was registered).
        await evaluate_all(gateway, URL, T0 + timedelta(seconds=1), counted)
        first = collections.Counter(counted.calls)
        counted.calls.clear()
        counted.sent.clear()
        # Every later interval: one query per metric for all 200.
        observations = await evaluate_all(gateway, URL, T0 + timedelta(seconds=31), counted)
        # later in the same 30s bucket: served from the cache
        again = await asyncio.gather(*(
            gateway.observe(URL, 30, T0 + timedelta(seconds=59), selector(0), rollout=("r", 0))
            for _ in range(5)
        ))
        return first, observations, again

    first, observations, again = asyncio.run(scenario())
    assert first == collections.Counter({(URL, base): 2 for base in BASES})
    assert counted.calls == collections.Counter({(URL, base): 1 for base in BASES})
    assert metrics.registry.get_sample_value(
        "fillprob_rollout_prometheus_queries_total", {"url": URL, "result": "ok"}) == 27
    assert metrics.registry.get_sample_value("fillprob_rollout_prometheus_query_seconds_count") == 27
    # the rollouts' series only (5 queries of one series per pod, 4 per symbol), in each
    # interval: no other target's
    assert metrics.registry.get_sample_value(
        "fillprob_rollout_prometheus_samples_total", {"url": URL}) == 2 * N * (5 + 4 * 2)

    up = next(q for q in counted.sent if q.startswith("timestamp(up"))
    namespaces = "|".join(f"ns{i}" for i in range(10))
    assert up.startswith(f'timestamp(up{{namespace=~"{namespaces}",pod=~"(?:grinder0|grinder1|grinder10|')
    assert up.endswith(')-[a-z0-9]+-[a-z0-9]+"})')
    for i, obs in enumerate(observations):
        assert obs.available, obs.reason
        assert list(obs.pods) == [pod(i)]
        metrics_of = obs.pods[pod(i)]
        assert metrics_of.enforce_enabled == float(i)
        assert metrics_of.circuit_breaker_trips == float(i)
        assert metrics_of.blocks_by_symbol == {"SYM1": float(i), "SYM2": float(i)}
        assert metrics_of.recent_orders_by_symbol == {"SYM1": float(i), "SYM2": float(i)}
        assert metrics_of.sampled_at == T0 - timedelta(seconds=3)  # the scrape, not the evaluation, time
    assert all(o.pods == observations[0].pods for o in again)


def test_one_rollout_asks_for_its_own_series_only():
    counted = Counted()
    gateway = make_gateway(counted)
    obs = asyncio.run(gateway.observe(URL, 30, T0, selector(3), rollout=("r", 3)))
    assert obs.available and list(obs.pods) == [pod(3)]
    assert counted.calls == collections.Counter({(URL, base): 1 for base in BASES})
    assert 'timestamp(up{namespace="ns3",pod=~"grinder3-[a-z0-9]+-[a-z0-9]+"})' in counted.sent
    assert 'increase(grinder_router_orders_total{namespace="ns3",pod=~"grinder3-[a-z0-9]+-[a-z0-9]+"}[1m])' in counted.sent


def test_next_interval_and_other_url_query_again():
    counted = Counted()
    gateway = make_gateway(counted)
    matches = selector(0)

    async def scenario():
        await gateway.observe("http://a:9090", 30, T0, matches, rollout="a")
        await gateway.observe("http://a:9090", 30, T0 + timedelta(seconds=10), matches, rollout="a")
        await gateway.observe("http://b:9090", 30, T0 + timedelta(seconds=10), matches, rollout="b")
        await gateway.observe("http://a:9090", 30, T0 + timedelta(seconds=30), matches, rollout="a")
        # a late caller still in the previous bucket gets the newer answer, no new query
        await gateway.observe("http://a:9090", 30, T0 + timedelta(seconds=20), matches, rollout="a")

    asyncio.run(scenario())
    per_url = collections.Counter(url for url, _ in counted.calls.elements())
    assert per_url == {"http://a:9090": 18, "http://b:9090": 9}


def test_unreachable_prometheus_is_no_data_and_is_asked_once_per_interval():
    counted = Counted()
    metrics = OperatorMetrics()
    gateway = make_gateway(counted, metrics=metrics)

    async def scenario():
        await evaluate_all(gateway, "http://down:9090", T0, counted)  # all registered
        counted.calls.clear()
        counted.fail = True
        return await evaluate_all(gateway, "http://down:9090", T0 + timedelta(seconds=30), counted)

    observations = asyncio.run(scenario())
    assert {(o.available, o.reason) for o in observations} == {(False, "PrometheusUnreachable")}
    assert sum(counted.calls.values()) == 9
    assert metrics.registry.get_sample_value(
        "fillprob_rollout_prometheus_queries_total", {"url": "http://down:9090", "result": "error"}) == 9


def test_a_new_rollout_in_an_interval_already_asked_gets_a_top_up_not_missing_data():
    counted = Counted()
    gateway = make_gateway(counted)

    async def scenario():
        await gateway.observe(URL, 30, T0, selector(0), rollout=("r", 0))
        counted.sent.clear()
        new = await gateway.observe(URL, 30, T0 + timedelta(seconds=5), selector(7), rollout=("r", 7))
        top_up = list(counted.sent)
        again = await gateway.observe(URL, 30, T0 + timedelta(seconds=6), selector(7), rollout=("r", 7))
        counted.sent.clear()
        await gateway.observe(URL, 30, T0 + timedelta(seconds=30), selector(0), rollout=("r", 0))
        return new, top_up, again, list(counted.sent)

    new, top_up, again, next_interval = asyncio.run(scenario())
    assert new.available and list(new.pods) == [pod(7)]
    assert again.pods == new.pods
    # the top-up asked for the new rollout's series only, and once
    assert len(top_up) == 9 and 'timestamp(up{namespace="ns7",pod=~"grinder7-[a-z0-9]+-[a-z0-9]+"})' in top_up
    # the next interval: one query per metric for both
    assert len(next_interval) == 9
    assert 'timestamp(up{namespace=~"ns0|ns7",pod=~"(?:grinder0|grinder7)-[a-z0-9]+-[a-z0-9]+"})' in next_interval


def test_a_changed_selector_is_topped_up_too():
    counted = Counted()
    gateway = make_gateway(counted)

    async def scenario():
        await gateway.observe(URL, 30, T0, selector(0), rollout=("r", 0))
        return await gateway.observe(URL, 30, T0 + timedelta(seconds=5), selector(10), rollout=("r", 0))

    obs = asyncio.run(scenario())
    assert obs.available and list(obs.pods) == [pod(10)]
    assert sum(counted.calls.values()) == 18


def test_a_rollout_that_stops_observing_leaves_the_scope():
    counted = Counted()
    gateway = make_gateway(counted)

    async def scenario():
        await gateway.observe(URL, 30, T0, selector(1), rollout=("r", 1))
        await gateway.observe(URL, 30, T0, selector(2), rollout=("r", 2))
        await gateway.observe(URL, 30, T0, selector(3), rollout=("r", 3))
        gateway.forget(("r", 1))  # its daemon stopped
        # ("r", 2) observes every interval; ("r", 3) never again (another replica runs it now)
        for k in range(1, FORGET_AFTER_INTERVALS + 2):
            await gateway.observe(URL, 30, T0 + timedelta(seconds=30 * k), selector(2), rollout=("r", 2))
        counted.sent.clear()
        await gateway.observe(URL, 30, T0 + timedelta(seconds=30 * (FORGET_AFTER_INTERVALS + 2)),
                              selector(2), rollout=("r", 2))
        return list(counted.sent)

    sent = asyncio.run(scenario())
    assert len(sent) == 9
    assert 'timestamp(up{namespace="ns2",pod=~"grinder2-[a-z0-9]+-[a-z0-9]+"})' in sent
    assert not [q for q in sent if "ns1" in q or "ns3" in q]


def test_forgotten_now_and_stale_later():
    gateway = make_gateway(Counted())
    asyncio.run(gateway.observe(URL, 30, T0, selector(1), rollout=("r", 1)))
    asyncio.run(gateway.observe(URL, 30, T0, selector(2), rollout=("r", 2)))
    assert gateway.scope(URL, 30, T0).matches({"namespace": "ns1", "pod": pod(1)})
    gateway.forget(("r", 1))
    assert not gateway.scope(URL, 30, T0).matches({"namespace": "ns1", "pod": pod(1)})
    assert gateway.scope(URL, 30, T0 + timedelta(seconds=30 * FORGET_AFTER_INTERVALS)).matches(
        {"namespace": "ns2", "pod": pod(2)})
    # not refreshed for more than FORGET_AFTER_INTERVALS intervals: nothing left to ask for
    assert gateway.scope(URL, 30, T0 + timedelta(seconds=30 * FORGET_AFTER_INTERVALS + 1)).arms == ()


def test_no_series_for_the_pods_is_series_absent_not_zero():
    gateway = make_gateway(Counted())
    obs = asyncio.run(gateway.observe(URL, 30, T0, default_selector("ns0", "not-deployed"), rollout="x"))
    assert (obs.available, obs.reason, dict(obs.pods)) == (False, "SeriesAbsent", {})


def test_custom_selector_scopes_the_query_and_splits_exactly():
    counted = Counted()
    gateway = make_gateway(counted)
    custom = parse_selector('namespace="ns3",pod=~"grinder(3|13)-.*"')
    obs = asyncio.run(gateway.observe(URL, 30, T0, custom, rollout="x"))
    assert sorted(obs.pods) == ["grinder13-5d9c7b-x0013", "grinder3-5d9c7b-x0003"]
    assert 'timestamp(up{namespace="ns3",pod=~"(?:grinder(3|13)-.*)"})' in counted.sent


def test_a_selector_without_namespace_is_its_own_arm():
    counted = Counted()
    gateway = make_gateway(counted)

    async def scenario():
        await gateway.observe(URL, 30, T0, selector(4), rollout="a")
        return await gateway.observe(URL, 30, T0 + timedelta(seconds=30),
                                     parse_selector('job="kubernetes-pods",pod=~"grinder1[0-9]-.*"'), rollout="b")

    obs = asyncio.run(scenario())
    assert sorted(obs.pods) == sorted(pod(i) for i in range(10, 20))
    assert ('timestamp(up{namespace="ns4",pod=~"grinder4-[a-z0-9]+-[a-z0-9]+"}) or '
            'timestamp(up{job="kubernetes-pods",pod=~"grinder1[0-9]-.*"})') in counted.sent


def test_a_caller_that_must_not_wait_gets_the_newest_answer_while_this_buckets_is_fetched_behind():
    counted = Counted()
    clock = FixedClock(T0 + timedelta(seconds=1))
    gateway = make_gateway(counted, clock=clock)
    later = T0 + timedelta(seconds=31)  # the next 30s bucket

    async def scenario():
        # Nothing here yet: even a caller that must not wait waits for the first answer.
        first = await gateway.observe(URL, 30, clock.at, selector(0), rollout=("r", 0), wait=False)
        assert first.available and first.queried_at == T0 + timedelta(seconds=1)
        asked = sum(counted.calls.values())
        # The next bucket, Prometheus stuck: the newest answer at once, this bucket's fetch behind it.
        counted.release.clear()
        clock.at = later
        newest = await asyncio.wait_for(
            gateway.observe(URL, 30, later, selector(0), rollout=("r", 0), wait=False), 1)
        assert newest.available and newest.queried_at == first.queried_at
        assert newest.pods == first.pods
        # The fetch behind it reaches the fake (in the executor's threads) in its own time.
        for _ in range(500):
            if sum(counted.calls.values()) > asked:
                break
            await asyncio.sleep(0.01)
        assert sum(counted.calls.values()) > asked, "this bucket's answer is not being fetched"
        # A second caller that must not wait: the same newest answer, no second fetch.
        again = await asyncio.wait_for(
            gateway.observe(URL, 30, later, selector(0), rollout=("r", 0), wait=False), 1)
        assert again.queried_at == first.queried_at
        # A caller that may wait gets this bucket's answer, the one fetched behind.
        counted.release.set()
        waited = await asyncio.wait_for(gateway.observe(URL, 30, later, selector(0), rollout=("r", 0)), 5)
        assert waited.queried_at == later
        assert sum(counted.calls.values()) - asked == len(BASES)

    asyncio.run(scenario())


def test_the_daemons_waiting_for_a_buckets_answer_start_one_fetch_and_go_on_when_it_is_here():
    counted = Counted()
    clock = FixedClock(T0 + timedelta(seconds=1))
    gateway = make_gateway(counted, clock=clock)

    async def scenario():
        for i in range(N):  # every rollout's last tick registered its selector
            await gateway.observe(URL, 30, clock.at, selector(i), rollout=("r", i))
        assert gateway.answer(URL, 30, clock.at, selector(0), limit=30).done()  # this bucket's is here
        asked = sum(counted.calls.values())
        # The next bucket: 200 daemons ask for its answer in one turn, Prometheus slow to answer.
        counted.release.clear()
        clock.at = T0 + timedelta(seconds=31)
        waits = [gateway.answer(URL, 30, clock.at, selector(i), limit=30) for i in range(N)]
        for _ in range(50):
            await asyncio.sleep(0)
        assert not any(w.done() for w in waits)  # not before the answer is here
        counted.release.set()
        await asyncio.wait_for(asyncio.gather(*waits), 5)
        assert sum(counted.calls.values()) - asked == len(BASES)  # one fetch for all of them
        # ...which covers every registered rollout: their ticks take it without waiting.
        assert all(gateway.answered(URL, 30, clock.at, selector(i)) for i in range(N))
        # An answer that failed ends the wait too (the tick reads "unreachable", no data).
        counted.fail = True
        clock.at = T0 + timedelta(seconds=61)
        await asyncio.wait_for(gateway.answer(URL, 30, clock.at, selector(0), limit=30), 5)
        seen = await gateway.observe(URL, 30, clock.at, selector(0), rollout=("r", 0))
        assert (seen.available, seen.reason) == (False, "PrometheusUnreachable")

    asyncio.run(scenario())


def test_a_wait_for_an_answer_ends_at_its_limit_and_an_older_buckets_answer_does_not_end_it():
    counted = Counted()
    clock = FixedClock(T0 + timedelta(seconds=1))
    # Threads for the held queries and the others (the default pool has 6 on two cores).
    gateway = make_gateway(counted, clock=clock, executor=ThreadPoolExecutor(max_workers=2 * len(BASES) + 2))

    async def scenario():
        await gateway.observe(URL, 30, clock.at, selector(0), rollout=("r", 0))
        asked = sum(counted.calls.values())
        stuck = counted.release
        stuck.clear()  # the next bucket's queries are held...
        later = gateway.answer(URL, 30, T0 + timedelta(seconds=31), selector(0), limit=1.0)
        for _ in range(500):
            if sum(counted.calls.values()) - asked == len(BASES):
                break
            await asyncio.sleep(0.01)
        assert sum(counted.calls.values()) - asked == len(BASES)
        counted.release = threading.Event()  # ...and the later ones are not
        counted.release.set()
        # A top-up of the older bucket (a new rollout) is stored meanwhile: not the answer awaited.
        await gateway.observe(URL, 30, clock.at, selector(1), rollout=("r", 1))
        await asyncio.sleep(0.05)
        assert not later.done()
        await asyncio.wait_for(later, 3)  # its limit: the tick goes on (and waits in itself)
        assert gateway._awaited == {}  # and nothing is left behind for it
        stuck.set()

    asyncio.run(scenario())
