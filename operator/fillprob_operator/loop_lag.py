"""How responsive the operator's event loop is: a task sleeps a fixed period and records how
much later than asked it woke (`fillprob_rollout_event_loop_lag_seconds`). Everything that runs
on the loop (every rollout's tick, kopf's watches, the webhook) delays that wake-up; the
promise is lag p99 at most 50 ms with 300 rollouts (issue 10).

The garbage collector's pauses are timed too (`fillprob_operator_gc_pause_seconds`): a
collection holds the GIL, so the loop waits for it whichever thread set it off, and at hundreds
of rollouts they are much of the lag (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import time
from typing import Any, Awaitable, Callable

from . import allocator

PERIOD_SECONDS = 0.25


async def measure_lag(
    observe: Callable[[float], None],
    period: float = PERIOD_SECONDS,
    *,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Until cancelled: sleep `period`, observe how late the wake-up came (never below 0)."""
    clock = clock or asyncio.get_running_loop().time
    while True:
        due = clock() + period
        await sleep(period)
        observe(max(0.0, clock() - due))


def start(observe: Callable[[float], None], period: float = PERIOD_SECONDS) -> asyncio.Task:
    return asyncio.get_running_loop().create_task(measure_lag(observe, period), name="fillprob-loop-lag")


class GcPauses:
    """Times every collection (`gc.callbacks`) into a bounded buffer; `drain` hands them over.

    The callback runs inside the collection, in whatever thread allocated: it takes no lock (a
    thread holding the metrics' lock may be the one collecting) and only appends to a deque;
    the loop drains it into the histogram."""

    KEPT = 10_000  # pauses kept between drains; older ones are dropped

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        self._pauses: collections.deque[tuple[int, float]] = collections.deque(maxlen=self.KEPT)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
        else:
            self._pauses.append((info["generation"], self._clock() - self._started))

    def install(self) -> GcPauses:
        gc.callbacks.append(self)
        return self

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def drain(self, observe: Callable[[int, float], None]) -> int:
        """observe(generation, seconds) for each pause since the last drain; how many."""
        count = 0
        while self._pauses:
            generation, seconds = self._pauses.popleft()
            observe(generation, seconds)
            count += 1
        return count


REFREEZE_SECONDS = 60.0
THAW_EVERY = 60  # refreezes: once an hour by default


async def keep_frozen(
    period: float = REFREEZE_SECONDS,
    thaw_every: int = THAW_EVERY,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    collector: Any = gc,
    trimmer: Callable[[], Any] = allocator.trim,
) -> None:
    """Until cancelled: every `period`, a collection of what is not frozen, then what survived it
    is frozen too (`gc.freeze`); every `thaw_every`-th time, everything is unfrozen first. Then
    the pages the allocator holds free go back to the system (allocator.py, `trim`): what the
    ticks of the busiest moment freed stays out of the RSS.

    The startup's freeze leaves out all the rollouts (kopf's state per object, the daemons, the
    caches): a full collection walked all of them, holding the GIL, every few seconds (gen2 p99
    about 250 ms at 100 rollouts in `make bench`). Frozen, they are walked once an hour. The
    price: a reference cycle that becomes garbage while frozen (a rollout deleted, its daemon's
    state) is freed at the next thaw, not at once; anything freed by its reference count (most
    of what a tick replaces) is freed at once, frozen or not."""
    count = 0
    while True:
        await sleep(period)
        count += 1
        if count % thaw_every == 0:
            collector.unfreeze()
        collector.collect()
        collector.freeze()
        trimmer()


FULL_NEVER = 1_000_000_000  # the oldest generation's threshold: never reached


def take_over_full_collections(collector: Any = gc) -> tuple[int, int, int]:
    """The collector's own full collections off; `keep_frozen` makes one every period instead.
    Returns the thresholds before, for `give_back_full_collections`.

    After the first freeze the collector's own full collections come often (0.3 a second at
    300 rollouts: a full one runs when what survived into the oldest generation since the last
    is a quarter of what that one left, and what it left was only the few unfrozen objects) and
    each held the GIL for up to 100-240 ms on a loaded node: the loop's worst lag. The young
    generations are still collected as before: most cyclic garbage dies young. What becomes
    cyclic garbage after surviving them waits for the next period (a minute), or the next thaw
    if frozen."""
    before = tuple(collector.get_threshold())
    collector.set_threshold(before[0], before[1], FULL_NEVER)
    return before  # type: ignore[return-value]


def give_back_full_collections(thresholds: tuple[int, int, int], collector: Any = gc) -> None:
    collector.set_threshold(*thresholds)


def start_keep_frozen(period: float = REFREEZE_SECONDS, thaw_every: int = THAW_EVERY) -> asyncio.Task:
    return asyncio.get_running_loop().create_task(keep_frozen(period, thaw_every), name="fillprob-gc-freeze")


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
