"""billing/writer.py: how much one flush takes. Up to max_batch events, but awaited submissions
ride the next commit together and a backlog drains in commits of up to max_flush events."""

from __future__ import annotations

import asyncio
from pathlib import Path

from billing.store.sqlite import SqliteStore
from billing.writer import EventWriter
from tests.billing.test_store_sqlite import opened
from tests.billing.test_writer import LONG_MS, FlakyStore, events, running, until
from tests.store.factories import METERS


async def test_awaited_submissions_share_a_commit_up_to_max_flush(tmp_path: Path) -> None:
    store = await opened(tmp_path / "w.db", METERS)
    flaky = FlakyStore(store)
    flaky.gate.clear()  # the first flush waits at the store while the others queue
    writer = EventWriter(flaky, LONG_MS, max_batch=4, max_flush=10)
    try:
        async with running(writer):
            first = asyncio.create_task(writer.submit_durable(events("a", 1)))
            await until(lambda: flaky.calls == 1)
            queued = [asyncio.create_task(writer.submit_durable(events(p, 3))) for p in "bcde"]
            await until(lambda: writer.pending == 13)
            flaky.gate.set()
            for task in (first, *queued):
                assert all((await task).stored)
            assert flaky.batches == [1, 9, 3]  # b, c and d together; e would make 12
            assert await writer.close(timeout=5) == 0
    finally:
        await store.close()


async def test_a_backlog_drains_in_commits_of_max_flush(tmp_path: Path) -> None:
    store = await opened(tmp_path / "w.db", METERS)
    flaky = FlakyStore(store)
    flaky.gate.clear()
    writer = EventWriter(flaky, LONG_MS, max_batch=2, max_flush=10)
    try:
        async with running(writer):
            writer.submit(events("a", 2))  # a full batch: flushed at once, held at the store
            await until(lambda: flaky.calls == 1)
            for prefix in "bcdefgh":
                writer.submit(events(prefix, 2))
            flaky.gate.set()
            assert await writer.close(timeout=5) == 0
        # 14 queued: 10 at once, then the 4 left (below max_flush) in batches again
        assert flaky.batches == [2, 10, 2, 2]
    finally:
        await store.close()


async def test_below_a_backlog_unawaited_events_keep_to_max_batch(tmp_path: Path) -> None:
    store: SqliteStore = await opened(tmp_path / "w.db", METERS)
    flaky = FlakyStore(store)
    flaky.gate.clear()
    writer = EventWriter(flaky, LONG_MS, max_batch=2, max_flush=10)
    try:
        async with running(writer):
            writer.submit(events("a", 2))
            await until(lambda: flaky.calls == 1)
            for prefix in "bcd":
                writer.submit(events(prefix, 2))
            durable = asyncio.create_task(writer.submit_durable(events("e", 1)))
            flaky.gate.set()
            assert (await durable).stored == (True,)
            assert await writer.close(timeout=5) == 0
        # the awaited submission waits its turn (order is kept), then takes what it can
        assert flaky.batches == [2, 2, 2, 3]
    finally:
        await store.close()
