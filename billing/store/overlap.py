"""Python work of a PostgreSQL append done while the server works on the append's statements.

An append alternates between Python (folding events, building delta rows) and the
server (inserting events, merging aggregates). Done one after the other, the append takes the
sum of both, and the fleet's appends queue behind its row lock for all of it. Both sides fit
on different cores, so the append starts a statement, does the Python work that does not
depend on it while the server runs it, and then awaits the statement.

Only work that needs nothing of the statement's answer overlaps it: a fold assumes the events
are stored, and the caller discards it when the insert was refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from billing.events import UsageEvent
from billing.store.base import BatchFold

T = TypeVar("T")
U = TypeVar("U")

# Events folded between two turns of the event loop: about half a millisecond of work, so
# that a statement in flight on the same loop is fed and answered without waiting long.
FOLD_SLICE = 500


async def fold_in_slices(batch: BatchFold, events: Sequence[UsageEvent], first_seq: int) -> None:
    """Fold `events`, numbered from `first_seq`, into `batch`, giving the loop a turn after
    each FOLD_SLICE of them."""
    for start in range(0, len(events), FOLD_SLICE):
        batch.add_all(events[start:start + FOLD_SLICE], first_seq + start)
        await asyncio.sleep(0)


async def both(statement: Coroutine[Any, Any, T], work: Coroutine[Any, Any, U]) -> tuple[T, U]:
    """Run `statement` and `work` (which gives the loop turns) together; both results. When
    either fails, the other is cancelled and awaited, and the error raised as it is."""
    first, second = asyncio.create_task(statement), asyncio.create_task(work)
    try:
        await asyncio.wait((first, second), return_when=asyncio.FIRST_EXCEPTION)
        for task in (first, second):
            if task.done():
                task.result()  # raises the task's error
        return first.result(), second.result()
    except BaseException:
        await _stop(first)
        await _stop(second)
        raise


async def _stop(task: asyncio.Task[Any]) -> None:
    """Cancel the task and wait until it has finished (its outcome is dropped)."""
    task.cancel()
    await asyncio.wait((task,))
