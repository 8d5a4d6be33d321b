"""billing/scheduler.py with a real engine and store: the test moves the clock and wakes the
scheduler instead of sleeping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from billing.scheduler import Scheduler
from tests.billing.test_engine_kit import DAY, GRACE, JAN, Billing, event, open_billing


@pytest.fixture
async def billing(tmp_path: Path) -> AsyncIterator[Billing]:
    b = await open_billing(tmp_path / "b.db")
    yield b
    await b.store.close()


@contextlib.asynccontextmanager
async def running(scheduler: Scheduler) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(scheduler.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_statements_are_drafted_then_finalised_as_time_moves(billing: Billing) -> None:
    await billing.append([event("c", "api.call", JAN.start_ms + DAY)])
    scheduler = Scheduler(billing.engine, clock=billing.clock)
    async with running(scheduler):
        await scheduler.finished(1)
        assert await billing.engine.statement_counts() == {"draft": 0, "final": 0}
        steps = [(JAN.end_ms, {"draft": 1, "final": 0}),
                 (JAN.end_ms + GRACE, {"draft": 0, "final": 1})]
        for count, (at, expected) in enumerate(steps, start=2):
            billing.clock.now = at
            scheduler.wake()
            await scheduler.finished(count)
            assert await billing.engine.statement_counts() == expected
    assert (scheduler.runs, scheduler.errors) == (3, 0)


async def test_a_failing_run_is_counted_and_retried_without_stopping(billing: Billing) -> None:
    await billing.append([event("c", "api.call", JAN.start_ms + DAY)])
    billing.clock.now = JAN.end_ms
    scheduler = Scheduler(billing.engine, clock=billing.clock, retry_initial_s=0.01,
                          retry_max_s=0.02)
    await billing.store.close()  # every run fails: the store is not open
    async with running(scheduler):
        await scheduler.finished(3)
        assert scheduler.runs == 0 and scheduler.errors >= 3
        await billing.store.open()
        while scheduler.runs == 0:
            await scheduler.finished(scheduler.runs + scheduler.errors + 1)
        assert await billing.engine.statement_counts() == {"draft": 1, "final": 0}
