"""The event loop's lag is measured by the operator itself: how late a fixed-period sleeper wakes."""

from __future__ import annotations

import asyncio
import gc
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


def test_the_garbage_collectors_pauses_are_timed_by_generation_and_drained_into_the_histogram():
    ticks = iter([10.0, 10.004, 20.0, 20.09])
    pauses = loop_lag.GcPauses(clock=lambda: next(ticks))
    pauses("start", {"generation": 0})
    pauses("stop", {"generation": 0})
    pauses("start", {"generation": 2})
    pauses("stop", {"generation": 2})
    metrics = OperatorMetrics()
    assert pauses.drain(metrics.observe_gc_pause) == 2
    assert pauses.drain(metrics.observe_gc_pause) == 0  # drained once
    value = metrics.registry.get_sample_value
    assert value("fillprob_operator_gc_pause_seconds_sum", {"generation": "0"}) == pytest.approx(0.004)
    assert value("fillprob_operator_gc_pause_seconds_sum", {"generation": "2"}) == pytest.approx(0.09)
    assert value("fillprob_operator_gc_pause_seconds_bucket", {"generation": "2", "le": "0.075"}) == 0
    assert value("fillprob_operator_gc_pause_seconds_bucket", {"generation": "2", "le": "0.1"}) == 1


def test_a_real_collection_is_seen_and_the_buffer_is_bounded():
    pauses = loop_lag.GcPauses().install()
    try:
        gc.collect()
        seen: list[tuple[int, float]] = []
        pauses.drain(lambda generation, seconds: seen.append((generation, seconds)))
        assert any(generation == 2 for generation, _ in seen) and all(s >= 0 for _, s in seen)
        for _ in range(loop_lag.GcPauses.KEPT + 5):
            pauses("start", {"generation": 0})
            pauses("stop", {"generation": 0})
        assert pauses.drain(lambda *_: None) == loop_lag.GcPauses.KEPT
    finally:
        pauses.uninstall()
    assert pauses not in gc.callbacks


class _Collector:
    """Records what keep_frozen asks of the collector."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")

    def collect(self) -> None:
        self.calls.append("collect")

    def freeze(self) -> None:
        self.calls.append("freeze")

    def trim(self) -> None:
        self.calls.append("trim")


def test_keep_frozen_freezes_what_survives_each_period_and_thaws_everything_every_nth():
    collector, slept = _Collector(), []

    async def sleep(period: float) -> None:
        slept.append(period)
        if len(slept) > 6:
            raise asyncio.CancelledError

    async def scenario() -> None:
        with pytest.raises(asyncio.CancelledError):
            await loop_lag.keep_frozen(60.0, 3, sleep=sleep, collector=collector, trimmer=collector.trim)

    asyncio.run(scenario())
    assert slept == [60.0] * 7
    assert collector.calls == ["collect", "freeze", "trim", "collect", "freeze", "trim",
                               "unfreeze", "collect", "freeze", "trim"] * 2


def test_a_cycle_that_dies_while_frozen_is_freed_at_the_next_thaw():
    """The real collector: what the operator built is frozen; a reference cycle among it that
    becomes garbage survives the collections in between, and is freed when everything thaws."""
    import weakref

    class Node:
        pass

    periods = 0

    async def sleep(period: float) -> None:
        nonlocal periods
        periods += 1
        if periods == 1:
            return  # the first pass: the cycle is alive, and frozen with the rest
        if periods == 2:
            holder.clear()  # the cycle is garbage now, frozen
            return
        if periods == 3:
            assert ref() is not None  # the second pass (no thaw) did not see it
            return
        raise asyncio.CancelledError  # after the third pass, a thaw

    node = Node()
    node.me = node  # a cycle: its reference count never drops to 0
    holder, ref = [node], weakref.ref(node)
    del node

    async def scenario() -> None:
        with pytest.raises(asyncio.CancelledError):
            await loop_lag.keep_frozen(1.0, 3, sleep=sleep)

    try:
        asyncio.run(scenario())
        assert ref() is None  # the thaw's collection freed it
    finally:
        gc.unfreeze()


def _full_collections_while_survivors_pile_up() -> int:
    """How many full collections the collector makes on its own while 200,000 young containers
    survive into the oldest generation (every few thousand of them a young collection)."""
    seen: list[int] = []

    def callback(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            seen.append(2)

    kept: list[list[int]] = []
    gc.callbacks.append(callback)
    try:
        for i in range(200_000):
            kept.append([i])
    finally:
        gc.callbacks.remove(callback)
    return len(seen)


def test_the_collectors_own_full_collections_are_taken_over_and_given_back():
    gc.collect()
    assert gc.isenabled()
    # The collector as the interpreter starts it makes full collections of its own here ...
    assert _full_collections_while_survivors_pile_up() > 0
    before = loop_lag.take_over_full_collections()
    try:
        assert gc.get_threshold()[:2] == before[:2]  # the young generations as they were
        # ... and none once keep_frozen has them.
        assert _full_collections_while_survivors_pile_up() == 0
    finally:
        loop_lag.give_back_full_collections(before)
    assert gc.get_threshold() == before
