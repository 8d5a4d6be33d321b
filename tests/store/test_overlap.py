"""The PostgreSQL append's overlap of Python work with the server's (billing/store/overlap.py):
the same fold as folding in one go, work that runs while the statement is in flight, and
failures that leave no task behind."""

from __future__ import annotations

import asyncio

import pytest

from billing.store.base import BatchFold
from billing.store.overlap import FOLD_SLICE, beside, both, fold_in_slices
from tests.store.factories import event, meter

METERS = (meter("calls", "tokens", "count"), meter("sum", "tokens", "sum", "n"),
          meter("max", "tokens", "max", "n"), meter("last", "tokens", "last", "n"))


def _events(n: int) -> list:
    return [event(f"e{i}", customer=f"c{i % 7}", ts=(i * 37) % 5_000, n=(i * 13) % 101)
            for i in range(n)]


async def test_a_fold_in_slices_equals_the_fold_of_all_events_at_once() -> None:
    events = _events(2 * FOLD_SLICE + 17)  # three slices, the last one short
    whole = BatchFold(METERS, 1_000)
    for seq, e in enumerate(events, 100):
        whole.add(e.customer_id, e.event_name, e.timestamp_ms, seq, e.metadata)
    sliced = BatchFold(METERS, 1_000)
    await fold_in_slices(sliced, events, 100)
    assert sliced.deltas == whole.deltas
    assert sliced.deltas["calls"][("c0", 0)].count > 1  # the events share rows


async def test_folding_in_slices_lets_other_tasks_run_between_slices() -> None:
    turns: list[int] = []
    batch = BatchFold(METERS, 1_000)

    async def other() -> None:
        while True:
            turns.append(sum(t.count for t in batch.tallies["calls"].values()))
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    await fold_in_slices(batch, _events(3 * FOLD_SLICE), 0)
    task.cancel()
    assert {FOLD_SLICE, 2 * FOLD_SLICE} <= set(turns)  # it ran after each slice


async def test_beside_runs_the_work_while_the_statement_is_in_flight() -> None:
    sent = asyncio.Event()
    answer = asyncio.get_running_loop().create_future()

    async def statement() -> str:
        sent.set()  # what a driver does before it awaits the server's answer
        return await answer

    def work() -> bool:
        answer.get_loop().call_soon(answer.set_result, "merged")
        return sent.is_set()

    assert await beside(statement(), work) == ("merged", True)


async def _waits_until_cancelled(cancelled: asyncio.Event) -> None:
    """A side that never finishes on its own and records its cancellation."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        cancelled.set()
        raise


async def test_beside_cancels_the_statement_when_the_work_fails() -> None:
    cancelled = asyncio.Event()

    def work() -> None:
        raise ValueError("bad fold")

    with pytest.raises(ValueError, match="bad fold"):
        await beside(_waits_until_cancelled(cancelled), work)
    assert cancelled.is_set()


async def test_both_raises_the_statement_error_and_cancels_the_work() -> None:
    cancelled = asyncio.Event()

    async def statement() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("server gone")

    with pytest.raises(ConnectionError, match="server gone"):
        await both(statement(), _waits_until_cancelled(cancelled))
    assert cancelled.is_set()


async def test_cancelling_the_caller_cancels_both_sides() -> None:
    first, second, third = asyncio.Event(), asyncio.Event(), asyncio.Event()
    callers = [asyncio.create_task(both(_waits_until_cancelled(first),
                                        _waits_until_cancelled(second))),
               asyncio.create_task(beside(_waits_until_cancelled(third), lambda: None))]
    await asyncio.sleep(0.01)
    for caller in callers:
        caller.cancel()
    for caller in callers:
        with pytest.raises(asyncio.CancelledError):
            await caller
    assert first.is_set() and second.is_set() and third.is_set()
