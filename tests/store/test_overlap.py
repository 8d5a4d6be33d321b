"""The PostgreSQL append's overlap of Python work with the server's (billing/store/overlap.py):
the same fold as folding in one go, and failures that leave no task behind."""

from __future__ import annotations

import asyncio

import pytest

from billing.meters import Aggregate, as_aggregate
from billing.store.base import BatchFold
from billing.store.overlap import FOLD_SLICE, both, fold_in_slices
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
    assert _aggregates(sliced) == _aggregates(whole)
    assert _aggregates(sliced)["calls"][("c0", 0)].count > 1  # the events share rows


def _aggregates(batch: BatchFold) -> dict[str, dict[tuple[str, int], Aggregate]]:
    return {meter: {key: as_aggregate(tally) for key, tally in cells.items()}
            for meter, cells in batch.cells.items()}


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


async def _waits_until_cancelled(cancelled: asyncio.Event) -> None:
    """A side that never finishes on its own and records its cancellation."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        cancelled.set()
        raise


async def test_both_raises_the_statement_error_and_cancels_the_work() -> None:
    cancelled = asyncio.Event()

    async def statement() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("server gone")

    with pytest.raises(ConnectionError, match="server gone"):
        await both(statement(), _waits_until_cancelled(cancelled))
    assert cancelled.is_set()


async def test_cancelling_the_caller_cancels_both_sides() -> None:
    first, second = asyncio.Event(), asyncio.Event()
    caller = asyncio.create_task(both(_waits_until_cancelled(first),
                                      _waits_until_cancelled(second)))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert first.is_set() and second.is_set()
