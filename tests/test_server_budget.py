"""The server-wide budget of unstored bytes (kluis.server.budget): who waits, and who is woken."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from kluis.server.budget import UnstoredBudget


def test_one_frame_is_admitted_into_an_empty_budget_even_if_larger() -> None:
    budget = UnstoredBudget(100)
    states = [budget.full]
    budget.take(1_000)  # the caller checks `full` before taking, so an empty budget takes anything
    states.append(budget.full)
    budget.give(1_000)
    states.append(budget.full)
    assert states == [False, True, False]
    assert budget.used == 0


def test_waiters_are_woken_once_there_is_room_and_not_before() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        budget = UnstoredBudget(100)
        budget.take(60)
        budget.take(60)
        first, second, gone = loop.create_future(), loop.create_future(), loop.create_future()
        for room in (first, second, gone):
            budget.wait(room)
        gone.cancel()  # its connection closed meanwhile: skipped, no InvalidStateError
        budget.give(10)  # 110 used: still full
        assert not first.done()
        assert not second.done()
        budget.give(60)  # 50 used: everyone checks again
        assert first.done()
        assert second.done()
        later = loop.create_future()
        budget.wait(later)
        budget.give(50)
        assert later.done(), "a waiter registered after a wake-up is woken by the next give"

    asyncio.run(main())


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=50))
def test_what_is_taken_and_given_back_leaves_it_empty(sizes: list[int]) -> None:
    budget = UnstoredBudget(5_000)
    for size in sizes:
        budget.take(size)
    for size in reversed(sizes):
        budget.give(size)
    assert budget.used == 0
    assert not budget.full
