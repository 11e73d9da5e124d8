"""The event loop's lag is measured by the operator itself: how late a fixed-period sleeper wakes."""

from __future__ import annotations

import asyncio
import time

import pytest

from fillprob_operator import loop_lag
from fillprob_operator.metrics import OperatorMetrics


class Finished(Exception):
    pass


def test_each_wake_up_records_how_late_it_came():
    now = [100.0]
    delays = [0.0, 0.003, 0.4, -0.01]  # the last one early: lag is never negative
    observed: list[float] = []

    async def sleep(period: float) -> None:
        if not delays:
            raise Finished
        now[0] += period + delays.pop(0)

    with pytest.raises(Finished):
        asyncio.run(loop_lag.measure_lag(observed.append, 0.25, clock=lambda: now[0], sleep=sleep))
    assert observed == pytest.approx([0.0, 0.003, 0.4, 0.0])


def test_a_blocked_loop_shows_in_the_histogram():
    metrics = OperatorMetrics()
    observed: list[float] = []

    def observe(lag: float) -> None:
        observed.append(lag)
        metrics.event_loop_lag.observe(lag)

    async def until(predicate, deadline: float = 10.0) -> None:
        end = time.monotonic() + deadline
        while not predicate():
            assert time.monotonic() < end, "not observed before the deadline"
            await asyncio.sleep(0.01)

    async def scenario() -> asyncio.Task:
        task = loop_lag.start(observe, period=0.05)
        await until(lambda: observed)
        time.sleep(0.3)  # a tick that hogs the loop
        # the sleeper due within 0.05 s wakes after the 0.3 s block: at least 0.25 s late
        await until(lambda: max(observed) >= 0.2)
        await loop_lag.stop(task)
        return task

    task = asyncio.run(scenario())
    assert task.done()
    assert metrics.registry.get_sample_value("fillprob_rollout_event_loop_lag_seconds_sum") >= 0.2
    assert metrics.registry.get_sample_value("fillprob_rollout_event_loop_lag_seconds_bucket", {"le": "0.1"}) < \
        metrics.registry.get_sample_value("fillprob_rollout_event_loop_lag_seconds_count")
