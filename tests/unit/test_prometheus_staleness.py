"""Old samples are not current data: a restarted Prometheus answers with what it had before it
stopped (no staleness markers at shutdown) until it scrapes again."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from fillprob_operator.adapters.prometheus import PrometheusGateway, lookback_seconds
from fillprob_operator.domain.selector import default_selector

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


class Clock:
    def now(self) -> datetime:
        return T0

    def monotonic(self) -> float:
        return T0.timestamp()


class Prometheus:
    """Two pods of ns/grinder, each last scraped `ages[pod]` seconds before T0."""

    def __init__(self, ages: dict[str, float]):
        self.ages = ages

    def custom_query(self, query: str) -> list[dict]:
        out = []
        for pod, age in self.ages.items():
            labels = {"namespace": "ns", "pod": pod}
            value = T0.timestamp() - age if query.startswith("timestamp(up{") else 1.0
            if "blocks" in query or "orders" in query:
                labels["symbol"] = "SYM1"
            out.append({"metric": labels, "value": [T0.timestamp(), str(value)]})
        return out


def observe(ages: dict[str, float], lookback: str = "10s", interval: float = 2):
    gateway = PrometheusGateway(connect=lambda url: Prometheus(ages), lookback=lookback, clock=Clock())
    return asyncio.run(
        gateway.observe("http://p:9090", interval, T0, default_selector("ns", "grinder"), rollout=("ns", "r")))


@pytest.mark.parametrize("text, seconds", [("250ms", 0.25), ("10s", 10), ("1m", 60), ("2h", 7200), ("1d", 86400)])
def test_lookback_seconds(text, seconds):
    assert lookback_seconds(text) == seconds


def test_fresh_scrapes_are_data():
    obs = observe({"grinder-5d9c7b-aaaaa": 1, "grinder-5d9c7b-bbbbb": 9})
    assert obs.available and sorted(obs.pods) == ["grinder-5d9c7b-aaaaa", "grinder-5d9c7b-bbbbb"]
    assert obs.pods["grinder-5d9c7b-bbbbb"].sampled_at == T0 - timedelta(seconds=9)


def test_only_stale_scrapes_are_missing_data_not_a_verdict():
    obs = observe({"grinder-5d9c7b-aaaaa": 25, "grinder-5d9c7b-bbbbb": 30})
    assert not obs.available and obs.pods == {}
    assert obs.reason == "SeriesStale: the pods' newest scrape is 25s old"


def test_a_stale_pod_is_dropped_the_fresh_one_kept():
    obs = observe({"grinder-5d9c7b-aaaaa": 1, "grinder-5d9c7b-bbbbb": 30})
    assert obs.available and sorted(obs.pods) == ["grinder-5d9c7b-aaaaa"]


def test_the_bound_is_the_lookback_or_three_intervals_whichever_is_longer():
    ages = {"grinder-5d9c7b-aaaaa": 50}
    assert not observe(ages, lookback="10s", interval=2).available
    assert observe(ages, lookback="1m", interval=2).available
    assert observe(ages, lookback="10s", interval=30).available
