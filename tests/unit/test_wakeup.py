"""A rollout's wake-up (reconciler.Wakeup): what asyncio.Event did for the daemons, with one
future and one timer per wait."""

from __future__ import annotations

import asyncio

from fillprob_operator.reconciler import Wakeup, Wakeups


def test_a_wait_ends_when_set_or_when_its_time_is_up():
    async def scenario():
        loop = asyncio.get_running_loop()
        wake = Wakeup()
        started = loop.time()
        assert await wake.wait(0.05) is False  # nobody woke it: the interval passed
        assert loop.time() - started >= 0.04
        waiting = asyncio.create_task(wake.wait(30))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        wake.set()
        assert await asyncio.wait_for(waiting, 1) is True  # at once, not after 30 s
        assert await asyncio.wait_for(wake.wait(30), 1) is True  # still set: no wait at all
        wake.clear()
        assert await wake.wait(0.01) is False

    asyncio.run(scenario())


def test_a_wake_before_the_wait_is_not_lost_and_every_waiter_wakes():
    async def scenario():
        wake = Wakeup()
        wake.set()  # a log line arrived while the tick ran
        assert await asyncio.wait_for(wake.wait(30), 1) is True
        wake.clear()
        # A rollout deleted and recreated under its name: two daemons wait on one wake-up.
        first, second = asyncio.create_task(wake.wait(30)), asyncio.create_task(wake.wait(30))
        await asyncio.sleep(0.01)
        wake.set()
        assert await asyncio.wait_for(asyncio.gather(first, second), 1) == [True, True]

    asyncio.run(scenario())


def test_a_cancelled_wait_leaves_neither_its_timer_nor_its_waiter():
    async def scenario():
        loop = asyncio.get_running_loop()
        wake = Wakeup()
        timers = len(loop._scheduled)  # noqa: SLF001 - the loop's pending timers, counted
        waiting = asyncio.create_task(wake.wait(30))
        await asyncio.sleep(0.01)
        assert len(loop._scheduled) == timers + 1  # noqa: SLF001
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert wake._waiters == []  # noqa: SLF001
        assert all(h.cancelled() for h in loop._scheduled[timers:])  # noqa: SLF001
        wake.set()  # nothing to wake, no error

    asyncio.run(scenario())


def test_wait_or_ends_at_the_first_of_a_wake_and_the_other_future_and_leaves_nothing_behind():
    """A tick waiting for Prometheus (the other future) and for a CB line's wake (reconciler.py)."""
    async def scenario():
        loop = asyncio.get_running_loop()
        wake, other = Wakeup(), loop.create_future()
        waiting = asyncio.create_task(wake.wait_or(other))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        wake.set()
        assert await asyncio.wait_for(waiting, 1) is True  # woken first
        assert wake._waiters == [] and not other.done()  # noqa: SLF001
        assert await asyncio.wait_for(wake.wait_or(other), 1) is True  # still set: no wait at all
        wake.clear()
        waiting = asyncio.create_task(wake.wait_or(other))
        await asyncio.sleep(0.01)
        other.set_result("answer")
        assert await asyncio.wait_for(waiting, 1) is False  # the answer came first
        wake.set()  # nothing waits: no error
        assert wake._waiters == []  # noqa: SLF001
        wake.clear()
        done = loop.create_future()
        done.set_result(None)
        assert await asyncio.wait_for(wake.wait_or(done), 1) is False  # already answered

    asyncio.run(scenario())


def test_wakeups_keep_one_per_rollout_until_dropped():
    wakeups = Wakeups()
    assert wakeups.event("ns", "a") is wakeups.event("ns", "a")
    assert wakeups.event("ns", "a") is not wakeups.event("ns", "b")
    wakeups.wake("ns", "a")
    assert wakeups.event("ns", "a").is_set() and not wakeups.event("ns", "b").is_set()
    wakeups.drop("ns", "a")
    assert not wakeups.event("ns", "a").is_set()
