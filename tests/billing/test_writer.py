"""billing/writer.py: group commit, durable submits, shutdown and a failing store."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from billing.events import UsageEvent
from billing.store.base import AppendResult, StoreError
from billing.store.sqlite import SqliteStore
from billing.writer import EventWriter, OnFull, OutcomeCounts, StoreUnavailable
from tests.billing.test_store_sqlite import opened
from tests.store.factories import METERS, event

LONG_MS = 3_600_000  # a flush interval no test waits for


class Recorder:
    """A WriterObserver that keeps what it hears."""

    def __init__(self) -> None:
        self.flushes: list[int] = []
        self.errors: list[Exception] = []
        self.outcomes: Counter[tuple[str, str, str]] = Counter()
        self.skipped: Counter[tuple[str, str]] = Counter()

    def on_flush(self, events_count: int, duration_s: float) -> None:
        assert duration_s >= 0
        self.flushes.append(events_count)

    def on_flush_error(self, exc: Exception) -> None:
        self.errors.append(exc)

    def on_stored(self, counts: OutcomeCounts) -> None:
        self.outcomes.update(counts)

    def on_skipped(self, meter: str, reason: str, n: int) -> None:
        self.skipped[(meter, reason)] += n


class FlakyStore:
    """The real store behind a switch that makes append fail like a full disk."""

    def __init__(self, store: SqliteStore, failures: int = 0) -> None:
        self.store = store
        self.failures = failures  # appends still to fail; -1: fail until healed
        self.batches: list[int] = []
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    def heal(self) -> None:
        self.failures = 0

    async def append(self, events: Sequence[UsageEvent], now_ms: int) -> AppendResult:
        self.calls += 1
        await self.gate.wait()
        if self.failures:
            self.failures -= self.failures > 0
            raise StoreError("database or disk is full", transient=True)
        self.batches.append(len(events))
        return await self.store.append(events, now_ms)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await opened(tmp_path / "w.db", METERS)
    yield s
    await s.close()


@contextlib.asynccontextmanager
async def running(writer: EventWriter) -> AsyncIterator[EventWriter]:
    """Run the writer loop as its owner does: a task that is always cancelled and awaited."""
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until condition holds (the test timeout bounds it)."""
    while not condition():  # noqa: ASYNC110 (the state belongs to the code under test)
        await asyncio.sleep(0.001)


def events(prefix: str, n: int, name: str = "tokens") -> list[UsageEvent]:
    return [event(f"{prefix}{i}", name=name, ts=i, n=1) for i in range(n)]


# -------------------------------------------------------------- group commit


async def test_submits_are_group_committed(store: SqliteStore) -> None:
    flaky = FlakyStore(store)
    writer = EventWriter(flaky, LONG_MS, max_batch=1000)
    async with running(writer):
        writer.submit([event("a"), event("b", name="api.call")])
        await asyncio.sleep(0.01)  # the loop now waits for the interval: a full batch must wake it
        for i in range(1249):
            writer.submit([event(f"a{i}"), event(f"b{i}", name="api.call")])
        assert writer.pending == 2500
        await asyncio.wait_for(until(lambda: writer.pending == 500), 5)
        assert flaky.batches == [1000, 1000]
        assert await writer.close(timeout=5) == 0
    assert flaky.batches == [1000, 1000, 500]
    assert len(await store.list_events(limit=10_000)) == 2500


async def test_a_lone_event_is_flushed_after_the_interval(store: SqliteStore) -> None:
    flaky = FlakyStore(store)
    writer = EventWriter(flaky, flush_interval_ms=5)
    async with running(writer):
        writer.submit(events("e", 3))
        await until(lambda: writer.pending == 0)
        assert flaky.batches == [3]
        assert await store.get_event("e2") is not None


async def test_submit_durable_resolves_after_the_commit(store: SqliteStore) -> None:
    flaky = FlakyStore(store)
    flaky.gate.clear()
    recorder = Recorder()
    writer = EventWriter(flaky, flush_interval_ms=1, observer=recorder)
    async with running(writer):
        first = asyncio.create_task(writer.submit_durable([event("x"), event("y")]))
        second = asyncio.create_task(writer.submit_durable([event("y"), event("z")]))
        await until(lambda: flaky.calls == 1)
        assert not first.done() and not second.done()
        assert await store.get_event("x") is None
        flaky.gate.set()
        assert (await first).stored == (True, True)
        assert (await second).stored == (False, True)
    assert flaky.batches == [4]
    assert await store.get_event("z") is not None
    assert recorder.outcomes == {("tokens", "api", "stored"): 3, ("tokens", "api", "duplicate"): 1}


async def test_durable_submissions_do_not_wait_for_the_interval(store: SqliteStore) -> None:
    writer = EventWriter(store, LONG_MS)
    async with running(writer):
        writer.submit(events("q", 2))  # queued for the (long) interval
        result = await writer.submit_durable(events("d", 1))  # would hang until LONG_MS
    assert result.stored == (True,)
    assert len(await store.list_events(limit=10)) == 3  # the queued events rode along


async def test_the_observer_hears_flushes_outcomes_and_skips(store: SqliteStore) -> None:
    recorder = Recorder()
    writer = EventWriter(store, LONG_MS, observer=recorder)
    async with running(writer):
        writer.submit([event("a", n=1), event("b"), event("c", n="x"),
                       event("mp_d", name="api.call", source="proxy")])
        writer.submit([event("a", n=1)])
        assert await writer.close(timeout=5) == 0
    assert recorder.flushes == [5]
    assert recorder.outcomes == {
        ("tokens", "api", "stored"): 3, ("tokens", "api", "duplicate"): 1,
        ("api.call", "proxy", "stored"): 1,
    }
    meters, reasons = ("tokens_sum", "tokens_max", "tokens_last"), ("missing", "not_numeric")
    assert recorder.skipped == {(m, reason): 1 for m in meters for reason in reasons}


# ------------------------------------------------------------------ shutdown


async def test_close_flushes_everything_then_run_returns(store: SqliteStore) -> None:
    slow = FlakyStore(store)
    slow.gate.clear()  # hold the first flush so that more events queue behind it
    writer = EventWriter(slow, LONG_MS)
    task = asyncio.create_task(writer.run())
    durable = asyncio.create_task(writer.submit_durable(events("d", 3)))
    await until(lambda: slow.calls == 1)
    writer.submit(events("e", 10))
    assert writer.pending == 13
    slow.gate.set()
    assert await writer.close(timeout=5) == 0
    await asyncio.wait_for(task, 5)
    assert (await durable).stored_count == 3
    assert len(await store.list_events(limit=100)) == 13
    assert not writer.accepting()
    with pytest.raises(StoreUnavailable):
        writer.submit(events("late", 1))
    with pytest.raises(StoreUnavailable):
        await writer.submit_durable(events("late", 1))


async def test_close_gives_up_after_its_timeout_when_the_store_stays_down(
    store: SqliteStore,
) -> None:
    writer = EventWriter(FlakyStore(store, failures=-1), LONG_MS, retry_initial_s=0.001)
    task = asyncio.create_task(writer.run())
    writer.submit(events("e", 4))
    durable = asyncio.create_task(writer.submit_durable(events("d", 2)))
    await until(lambda: writer.pending == 6)
    assert await writer.close(timeout=0.05) == 6
    await asyncio.wait_for(task, 5)
    with pytest.raises(StoreUnavailable):
        await durable


async def test_cancelling_the_loop_fails_durable_waiters(store: SqliteStore) -> None:
    stuck = FlakyStore(store)
    stuck.gate.clear()  # the flush never completes: the durable submitter is still waiting
    writer = EventWriter(stuck, LONG_MS)
    async with running(writer):
        durable = asyncio.create_task(writer.submit_durable(events("d", 2)))
        await until(lambda: writer.pending == 2)
    with pytest.raises(StoreUnavailable):
        await durable


# ------------------------------------------------------------- failing store


async def test_a_failing_store_loses_nothing_and_is_retried(store: SqliteStore) -> None:
    flaky = FlakyStore(store, failures=-1)
    recorder = Recorder()
    writer = EventWriter(flaky, LONG_MS, max_batch=3, observer=recorder,
                         retry_initial_s=0.001, retry_max_s=0.004)
    async with running(writer):
        writer.submit(events("a", 3))
        durable = asyncio.create_task(writer.submit_durable(events("b", 2)))
        await until(lambda: len(recorder.errors) >= 3)
        assert writer.failing and writer.pending == 5 and not durable.done()
        writer.submit(events("c", 4))  # the queue keeps growing while the disk is full
        flaky.heal()
        assert (await durable).stored == (True, True)
        assert await writer.close(timeout=5) == 0
    assert not writer.failing
    assert writer.pending == 0
    stored = {s.event.event_id for s in await store.list_events(limit=100)}
    assert stored == {f"{p}{i}" for p, n in (("a", 3), ("b", 2), ("c", 4)) for i in range(n)}
    assert all(isinstance(e, StoreError) for e in recorder.errors)


@pytest.mark.parametrize("on_full", ["reject", "drop"])
async def test_a_full_queue_applies_on_full(store: SqliteStore, on_full: OnFull) -> None:
    flaky = FlakyStore(store, failures=-1)
    recorder = Recorder()
    writer = EventWriter(flaky, LONG_MS, max_batch=5, max_pending=10, on_full=on_full,
                         observer=recorder, retry_initial_s=0.001, retry_max_s=0.004)
    async with running(writer):
        writer.submit(events("ok", 10))
        await until(lambda: flaky.calls > 0)  # a batch is due, and the store refuses it
        assert not writer.accepting()
        if on_full == "reject":
            with pytest.raises(StoreUnavailable):
                writer.submit(events("over", 2))
        else:
            writer.submit(events("over", 2))
        with pytest.raises(StoreUnavailable):  # an ingest is refused whatever on_full says
            await writer.submit_durable(events("durable", 1))
        assert writer.pending == 10
        flaky.heal()
        await until(lambda: writer.pending == 0)
        assert writer.accepting()
    expected = Counter({("tokens", "api", "stored"): 10, ("tokens", "api", "rejected"): 1})
    expected[("tokens", "api", "rejected" if on_full == "reject" else "dropped")] += 2
    assert recorder.outcomes == expected
    assert len(await store.list_events(limit=100)) == 10
