"""The shared answer is split into rollouts once per answer (`SeriesIndex`, built in one pass)
and each rollout's share is looked up: it is exactly what scanning the whole answer with the
rollout's selector gives (`split_by_pod`), down to the order in which counters are summed."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from selector_strategies import selectors_of

from fillprob_operator.adapters import prometheus
from fillprob_operator.adapters.prometheus import TEMPLATES, PrometheusGateway, Sample, SeriesIndex, split_by_pod
from fillprob_operator.domain.selector import default_selector, parse_selector

# Few names, so that series share pods across namespaces, and Deployments' names nest
NAMESPACES = ("", "ns1", "ns-2")
PODS = ("", "grinder-abc-d1", "grinder-x-1a-2b", "grinder.x-1a-2b", "g-1-2")
series_labels = st.fixed_dictionaries({}, optional={
    "namespace": st.sampled_from(NAMESPACES),
    "pod": st.sampled_from(PODS),
    "instance": st.sampled_from(("", "i1")),
    "job": st.sampled_from(("a", "b")),
    "symbol": st.sampled_from(("", "a", "b")),
})
samples = st.builds(
    Sample,
    labels=series_labels,
    timestamp=st.sampled_from([99.0, 100.0, 101.5]),
    # (0.1 + 0.2) + 0.3 != 0.1 + (0.2 + 0.3): the sums' order shows
    value=st.sampled_from([0.0, 1.0, 0.1, 0.2, 0.3, 7.5, 98.0]),
)
answers = st.dictionaries(st.sampled_from(list(TEMPLATES)), st.lists(samples, max_size=8).map(tuple), max_size=5)
names = st.sampled_from(NAMESPACES + PODS + ("grinder", "grinder-x", "grinder.x", "g", "a", "i1"))


@settings(max_examples=300)
@given(answers, st.lists(selectors_of(names), min_size=1, max_size=6))
def test_the_indexed_share_is_the_scanned_split(results, chosen):
    index = SeriesIndex(results)
    for selector in chosen:
        assert index.share(selector) == split_by_pod(results, selector.matches)


def answer_of(pods: dict[tuple[str, str], float]) -> dict[str, tuple[Sample, ...]]:
    return {
        "scraped_at": tuple(Sample({"namespace": ns, "pod": pod}, 100.0, 99.0) for ns, pod in pods),
        "circuit_breaker_trips": tuple(Sample({"namespace": ns, "pod": pod}, 100.0, v) for (ns, pod), v in pods.items()),
    }


def test_lookups_for_the_shapes_selectors_have():
    index = SeriesIndex(answer_of({
        ("ns", "grinder-5d9c7b-aaaaa"): 1.0,
        ("ns", "grinder-x-5d9c7b-bbbbb"): 2.0,  # another Deployment, a longer name
        ("ns", "grinder.x-5d9c7b-ccccc"): 3.0,
        ("other", "grinder-5d9c7b-ddddd"): 4.0,
    }))
    assert list(index.share(default_selector("ns", "grinder"))) == ["grinder-5d9c7b-aaaaa"]
    assert list(index.share(default_selector("ns", "grinder-x"))) == ["grinder-x-5d9c7b-bbbbb"]
    assert list(index.share(default_selector("ns", "grinder.x"))) == ["grinder.x-5d9c7b-ccccc"]
    assert list(index.share(parse_selector('pod="grinder-5d9c7b-ddddd"'))) == ["grinder-5d9c7b-ddddd"]
    assert sorted(index.share(parse_selector('namespace=~"ns|other",pod=~"grinder-.*"'))) == [
        "grinder-5d9c7b-aaaaa", "grinder-5d9c7b-ddddd", "grinder-x-5d9c7b-bbbbb"]
    assert index.share(default_selector("nowhere", "grinder")) == {}


def test_counters_are_summed_in_the_answer_s_order():
    """A pod name in two namespaces (a selector without namespace): its series come from two
    index groups, and (0.1 + 0.1) + 1.0 != (0.1 + 1.0) + 0.1."""
    series = [("ns1", 0.1), ("ns2", 0.1), ("ns1", 1.0)]
    results = {"circuit_breaker_trips": tuple(
        Sample({"namespace": ns, "pod": "grinder-abc-d1"}, 100.0, v) for ns, v in series)}
    selector = parse_selector('pod="grinder-abc-d1"')
    shared = SeriesIndex(results).share(selector)
    assert shared == split_by_pod(results, selector.matches)
    assert shared["grinder-abc-d1"].circuit_breaker_trips == (0.1 + 0.1) + 1.0


class Answering:
    def __init__(self, answer):
        self.answer = answer

    def custom_query(self, query: str) -> list[dict]:
        key = "scraped_at" if query.startswith("timestamp(up") else "circuit_breaker_trips"
        return [{"metric": dict(s.labels), "value": [s.timestamp, str(s.value)]} for s in self.answer.get(key, ())]


def test_the_gateway_builds_the_index_off_the_event_loop(monkeypatch):
    answer = answer_of({("ns", "grinder-5d9c7b-aaaaa"): 1.0})
    threads = []

    class Recording(SeriesIndex):
        def __init__(self, results):
            threads.append(threading.current_thread())
            super().__init__(results)

    monkeypatch.setattr(prometheus, "SeriesIndex", Recording)
    gateway = PrometheusGateway(connect=lambda url: Answering(answer), clock=Clock())
    obs = asyncio.run(gateway.observe("http://p:9090", 30, T0, default_selector("ns", "grinder"), rollout="r"))
    assert obs.available and obs.pods["grinder-5d9c7b-aaaaa"].circuit_breaker_trips == 1.0
    assert threads and threading.main_thread() not in threads


T0 = datetime.fromtimestamp(100.0, tz=timezone.utc)


class Clock:
    def now(self) -> datetime:
        return T0

    def monotonic(self) -> float:
        return 100.0
