#!/usr/bin/env python3
"""How much one evaluation interval costs the operator on the Prometheus side: figures, no verdict.

`.venv/bin/python scripts/bench_prometheus_split.py [--rollouts 300] [--pods 3] [--symbols 15]
[--other-targets 1500] [--repeat 3] [--before-sample 20]`

A synthetic answer shaped like the one the gates get: ROLLOUTS default selectors in 30
namespaces, PODS pods each, every gate metric per pod (the four per-symbol ones per symbol),
plus the `up` of OTHER_TARGETS pods no rollout selects (what an unscoped `timestamp(up)`
brought in). With the defaults, about 60k samples per interval.

Prints, per interval, best of REPEAT runs:
- before (issue 10): the unscoped answer, every rollout scanning all of it on the event loop
  (`split_by_pod`); timed on BEFORE_SAMPLE rollouts and scaled (all 300 take minutes);
- after: the scoped answer (only what the rollouts' selectors match: Prometheus does that),
  split for all rollouts at once (`split`: `SeriesIndex` built once, each share looked up),
  in the executor, off the event loop; on the loop each rollout only takes its share;
- the queries' scope: arms and length of one query;
- the event loop's lag while the real `PrometheusGateway` serves ROLLOUTS rollouts, all
  observing at once, for INTERVALS intervals against a fake Prometheus that answers the scoped
  answer at once (`loop_lag.measure_lag`, a 10 ms sleeper): p50, p99, max. The fixtures are
  frozen out of the garbage collector's sight first, as the operator freezes what its startup
  built (handlers.startup): they are no part of the operator's heap.
The times are this machine's (shared and noisy: compare them with each other, not with a budget).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from fillprob_operator import loop_lag

from fillprob_operator.adapters.prometheus import (
    COUNTERS,
    GAUGES,
    PER_SYMBOL,
    TEMPLATES,
    PrometheusGateway,
    Sample,
    SeriesIndex,
    gate_queries,
    split,
    split_by_pod,
)
from fillprob_operator.adapters.prometheus_scope import query_scope
from fillprob_operator.domain.selector import default_selector

NOW = 1_714_564_800.0


def answer(rollouts: int, pods: int, symbols: int, other_targets: int) -> dict[str, list[Sample]]:
    results: dict[str, list[Sample]] = {key: [] for key in TEMPLATES}
    for r in range(rollouts):
        for p in range(pods):
            labels = {"namespace": f"team-{r % 30}", "pod": f"grinder-{r}-5d9c7b{p:x}-{r:05d}",
                      "job": "kubernetes-pods", "instance": f"10.0.{r % 250}.{p}:9090"}
            results["scraped_at"].append(Sample(labels, NOW, NOW - 3))
            for key in (*GAUGES, *COUNTERS):
                results[key].append(Sample(labels, NOW, 1.0))
            for key in PER_SYMBOL:
                results[key] += [Sample({**labels, "symbol": f"SYM{s}"}, NOW, 5.0) for s in range(symbols)]
    for t in range(other_targets):
        labels = {"namespace": f"other-{t % 40}", "pod": f"web-{t}-7f8d9c-{t:05d}", "job": "kubernetes-pods"}
        results["scraped_at"].append(Sample(labels, NOW, NOW - 5))
    return results


def best(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


class Answering:
    """A fake `PrometheusConnect` that answers each gate query with its part of `results`,
    scraped 3 s before the clock's now."""

    def __init__(self, results: dict[str, tuple[Sample, ...]], clock: "Clock") -> None:
        self.clock = clock
        self.raw = {
            query.split("{")[0]: [{"metric": dict(s.labels), "value": [s.timestamp, str(s.value)]} for s in samples]
            for query, samples in zip(gate_queries("1m", query_scope([default_selector("n", "d")])).values(),
                                      results.values())
        }

    def custom_query(self, query: str) -> list[dict]:
        raw = self.raw[query.split("{")[0]]
        if query.startswith("timestamp(up"):
            scraped = str(self.clock.now().timestamp() - 3)
            return [{"metric": r["metric"], "value": [r["value"][0], scraped]} for r in raw]
        return raw


class Clock:
    def __init__(self) -> None:
        self.at = datetime.fromtimestamp(NOW, tz=timezone.utc)

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.at.timestamp()


def loop_lag_while_serving(selectors, results, intervals: int) -> list[float]:
    """The lag a 10 ms sleeper sees while every rollout observes, interval after interval
    (after a first one, in which every rollout registered: the operator's steady state)."""
    clock = Clock()
    prometheus = Answering(results, clock)
    gc.collect()
    gc.freeze()  # the fake's answers too
    gateway = PrometheusGateway(connect=lambda url: prometheus, clock=clock, executor=ThreadPoolExecutor(4))
    lags: list[float] = []

    async def every_rollout_observes() -> None:
        clock.at += timedelta(seconds=30)
        observed = await asyncio.gather(*(
            gateway.observe("http://p:9090", 30, clock.at, s, rollout=i) for i, s in enumerate(selectors)))
        assert all(o.available for o in observed), observed[0].reason

    async def scenario() -> None:
        await every_rollout_observes()
        measuring = loop_lag.start(lags.append, period=0.01)
        for _ in range(intervals):
            await every_rollout_observes()
        await loop_lag.stop(measuring)

    asyncio.run(scenario())
    return lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=300)
    parser.add_argument("--pods", type=int, default=3)
    parser.add_argument("--symbols", type=int, default=15)
    parser.add_argument("--other-targets", type=int, default=1500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before-sample", type=int, default=20)
    parser.add_argument("--intervals", type=int, default=5)
    args = parser.parse_args()

    selectors = [default_selector(f"team-{r % 30}", f"grinder-{r}") for r in range(args.rollouts)]
    unscoped = {k: tuple(v) for k, v in answer(args.rollouts, args.pods, args.symbols, args.other_targets).items()}
    scope = query_scope(selectors)
    scoped = {k: tuple(s for s in v if scope.matches(s.labels)) for k, v in unscoped.items()}
    queries = gate_queries("1m", scope)
    sample = selectors[:: max(1, args.rollouts // args.before_sample)][: args.before_sample]

    def before() -> None:
        for selector in sample:
            split_by_pod(unscoped, selector.matches)

    gc.collect()
    gc.freeze()
    # the same shares either way (the bench checks a few; the unit tests prove it)
    shares = split(scoped, selectors)
    assert all(shares[s] == split_by_pod(unscoped, s.matches) for s in sample[:5])
    old = best(args.repeat, before) / len(sample)
    build = best(args.repeat, lambda: SeriesIndex(scoped))
    after = best(args.repeat, lambda: split(scoped, selectors))
    samples = lambda results: sum(len(v) for v in results.values())  # noqa: E731
    print(f"rollouts {args.rollouts}, pods {args.rollouts * args.pods}; "
          f"queries per interval: {len(queries)} (before: 9, unscoped)")
    print(f"samples per interval: before {samples(unscoped)} (unscoped), after {samples(scoped)} (scoped)")
    print(f"scope: {len(scope.arms)} arm(s); timestamp(up{{...}}) is {len(queries['scraped_at'])} characters")
    print(f"before: split_by_pod, every rollout over the whole answer, on the loop: "
          f"{old * 1000:.1f} ms per rollout, {old * args.rollouts:.1f} s per interval "
          f"(timed on {len(sample)} rollouts)")
    print(f"after:  split for all {args.rollouts} rollouts, in the executor (off the loop): "
          f"{after * 1000:.1f} ms per interval (of which the index: {build * 1000:.1f} ms), "
          f"{after / args.rollouts * 1000:.3f} ms per rollout")
    lags = sorted(loop_lag_while_serving(selectors, scoped, args.intervals))
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    print(f"event loop lag while serving {args.rollouts} rollouts for {args.intervals} intervals "
          f"({len(lags)} wake-ups): p50 {statistics.median(lags) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
          f"max {lags[-1] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
