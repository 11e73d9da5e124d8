"""Ticks that come due together start a few at a time, one batch per turn of the event loop.

A tick in the steady state waits for nothing (the caches, the interval's shared Prometheus
answer): it runs from its timer to its end in one step of its task. The timers of the ticks due
while the loop was busy all fire in its next turn, and asyncio runs every callback ready at a
turn's start before it looks at the clock or the sockets again: at 300 rollouts on a loaded node
one turn ran 10 to 183 ticks back to back, 150-700 ms in which nothing else on the loop ran (a
circuit-breaker line's tick, the watches, the lag probe; docs/performance.md). Through a
`Pacer`, at most `per_turn` of them start in one turn; the others wait, in the order they came,
for the turns after, and the loop looks at its timers and sockets in between. Each still ticks,
only up to a few turns later; a turn costs the loop a poll of its sockets, no more.

A tick woken for a reason (a circuit-breaker line, a new spec, a stored alert) does not wait
for its turn: handlers.py asks only for the interval's ticks.
"""

from __future__ import annotations

import asyncio
import collections

TICKS_PER_TURN = 8


class Pacer:
    """At most `per_turn` callers of `turn` go on in one turn of the event loop."""

    def __init__(self, per_turn: int = TICKS_PER_TURN) -> None:
        if per_turn < 1:
            raise ValueError(f"per_turn: want 1 or more, got {per_turn}")
        self.per_turn = per_turn
        self._started = 0  # callers gone on in this turn
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._next_turn: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def turn(self) -> None:
        """At once (without suspending) while this turn has room and no one waits before the
        caller; else in a later turn, after those who waited before it."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # another loop (tests run several): the last one's turns are over
            self._loop, self._started, self._next_turn = loop, 0, None
            self._waiting.clear()
        self._schedule()  # this turn's end: the count starts again, the waiting go on
        if not self._waiting and self._started < self.per_turn:
            self._started += 1
            return
        waiter = loop.create_future()
        self._waiting.append(waiter)
        await waiter  # cancelled: the waiter is done, and `_turn` passes it over

    def _schedule(self) -> None:
        """The next turn's start: a callback queued now runs after every callback already
        ready, so in the loop's next turn."""
        if self._next_turn is None:
            self._next_turn = self._loop.call_soon(self._turn)  # type: ignore[union-attr]

    def _turn(self) -> None:
        self._next_turn = None
        self._started = 0
        while self._waiting and self._started < self.per_turn:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._started += 1
        if self._started or self._waiting:
            self._schedule()
