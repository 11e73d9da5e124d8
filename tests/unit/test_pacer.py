"""The pacer: ticks that come due together start a few per turn of the event loop, in order."""

from __future__ import annotations

import asyncio

import pytest

from fillprob_operator.pacer import Pacer


async def _turns(pacer: Pacer, callers: int, cancel: frozenset[int] = frozenset()) -> tuple[list[tuple[int, int]], int]:
    """(caller, the loop turn it went on in) for callers that all come in one turn; cancelled
    ones are cancelled while they wait. And how many turns went by."""
    turn = 0
    counting = True

    def count() -> None:
        nonlocal turn
        turn += 1
        if counting:
            asyncio.get_running_loop().call_soon(count)

    asyncio.get_running_loop().call_soon(count)
    went: list[tuple[int, int]] = []

    async def caller(i: int) -> None:
        await pacer.turn()
        went.append((i, turn))

    tasks = [asyncio.ensure_future(caller(i)) for i in range(callers)]
    await asyncio.sleep(0)  # every caller has asked
    for i in cancel:
        tasks[i].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    counting = False
    return went, turn


def test_callers_that_come_together_go_on_a_few_per_turn_in_the_order_they_came():
    went, _ = asyncio.run(_turns(Pacer(per_turn=4), 18))
    assert [i for i, _ in went] == list(range(18))
    per_turn: dict[int, int] = {}
    for _, turn in went:
        per_turn[turn] = per_turn.get(turn, 0) + 1
    assert max(per_turn.values()) <= 4
    assert len(per_turn) >= 5  # 18 in batches of at most four


def test_a_caller_with_room_in_its_turn_goes_on_without_suspending():
    async def scenario() -> None:
        pacer = Pacer(per_turn=2)
        for _ in range(2):
            with pytest.raises(StopIteration):
                pacer.turn().send(None)  # finished at its first step: no await
        third = pacer.turn()
        assert third.send(None) is not None  # no room: it waits (a future was yielded)
        third.close()

    asyncio.run(scenario())


def test_a_caller_cancelled_while_waiting_takes_no_ones_turn():
    went, _ = asyncio.run(_turns(Pacer(per_turn=2), 8, cancel=frozenset({2, 3, 5})))
    assert [i for i, _ in went] == [0, 1, 4, 6, 7]


def test_a_pacer_needs_room_for_one():
    with pytest.raises(ValueError, match="per_turn: want 1 or more"):
        Pacer(per_turn=0)


def test_a_pacer_left_by_a_closed_loop_with_its_turn_full_serves_the_next_loop():
    pacer = Pacer(per_turn=2)

    async def two() -> None:
        await pacer.turn()
        await pacer.turn()  # this turn is full; its end is queued behind the loop's stop

    loop = asyncio.new_event_loop()
    task = loop.create_task(two())
    loop.call_soon(loop.stop)  # the loop's last turn: the task's step, then the stop
    loop.run_forever()
    assert task.done()
    loop.close()
    went, _ = asyncio.run(asyncio.wait_for(_turns(pacer, 5), 5))
    assert [i for i, _ in went] == list(range(5))
