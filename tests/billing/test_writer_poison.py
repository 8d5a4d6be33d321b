"""billing/writer.py: a batch holding events the store can never take (a data error, not
the store's condition) is split until those events are found; they are rejected, logged and
counted, everything else is stored, and only their durable submitters hear of it."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.events import UsageEvent
from billing.store.base import AppendResult, StoreError
from billing.store.sqlite import SqliteStore
from billing.writer import EventsRejected, EventWriter
from tests.billing.test_store_sqlite import opened
from tests.billing.test_writer import LONG_MS, Recorder, events, running
from tests.store.factories import METERS, event


class Refusing:
    """The real store behind a wrapper that refuses every batch holding one of `poison`, as
    a store refuses a value it cannot hold (an external edge: the refusal is faked)."""

    def __init__(self, store: SqliteStore, poison: Collection[str], transient_first: int = 0):
        self.store = store
        self.poison = set(poison)
        self.transient_first = transient_first  # appends that fail like a full disk first
        self.batches: list[list[str]] = []

    async def append(self, events: Sequence[UsageEvent], now_ms: int) -> AppendResult:
        self.batches.append([e.event_id for e in events])
        if self.transient_first:
            self.transient_first -= 1
            raise StoreError("database or disk is full", transient=True)
        bad = [e.event_id for e in events if e.event_id in self.poison]
        if bad:
            raise StoreError(f"cannot store {bad[0]}")
        return await self.store.append(events, now_ms)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await opened(tmp_path / "p.db", METERS)
    yield s
    await s.close()


def writer_for(target: Refusing | SqliteStore, recorder: Recorder | None = None) -> EventWriter:
    return EventWriter(target, LONG_MS, observer=recorder, retry_initial_s=0.001,
                       retry_max_s=0.002)


async def stored_ids(store: SqliteStore) -> set[str]:
    return {s.event.event_id for s in await store.list_events(limit=10_000)}


async def test_a_poison_event_is_rejected_and_the_rest_stored(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    refusing = Refusing(store, {"e5"})
    recorder = Recorder()
    writer = writer_for(refusing, recorder)
    with caplog.at_level(logging.ERROR, logger="billing.writer"):
        async with running(writer):
            writer.submit(events("e", 8))
            assert await writer.close(timeout=5) == 0
    assert await stored_ids(store) == {f"e{i}" for i in range(8)} - {"e5"}
    assert recorder.outcomes == {("tokens", "api", "stored"): 7,
                                 ("tokens", "api", "rejected"): 1}
    assert recorder.flushes == [7]
    assert len(recorder.errors) == 2 + 3  # the batch twice, then a failing half per level
    assert [r.getMessage() for r in caplog.records if "e5" in r.getMessage()]
    assert "can never be stored" in caplog.text
    assert not writer.failing


async def test_later_events_are_not_held_up(store: SqliteStore) -> None:
    refusing = Refusing(store, {"bad"})
    writer = writer_for(refusing)
    async with running(writer):
        with pytest.raises(EventsRejected):
            await writer.submit_durable([event("bad")])  # durable: flushed at once
        writer.submit(events("next", 3))
        assert await writer.close(timeout=5) == 0
    assert await stored_ids(store) == {"next0", "next1", "next2"}
    assert refusing.batches[:2] == [["bad"], ["bad"]]  # retried once, then given up alone


async def test_only_the_submitter_of_a_poison_event_hears_of_it(store: SqliteStore) -> None:
    refusing = Refusing(store, {"b2"})
    writer = writer_for(refusing)
    async with running(writer):
        writer.submit(events("q", 2))  # the durable submissions below ride with these
        first = asyncio.create_task(writer.submit_durable(events("a", 3)))
        second = asyncio.create_task(writer.submit_durable(events("b", 3)))
        assert (await first).stored == (True, True, True)
        with pytest.raises(EventsRejected) as refused:
            await second
    assert refused.value.event_ids == ("b2",)
    assert "b2" in str(refused.value)
    assert await stored_ids(store) == {"q0", "q1", "a0", "a1", "a2", "b0", "b1"}


async def test_a_transient_failure_is_retried_whole_never_split(store: SqliteStore) -> None:
    refusing = Refusing(store, set(), transient_first=3)
    recorder = Recorder()
    writer = writer_for(refusing, recorder)
    async with running(writer):
        writer.submit(events("e", 6))
        assert await writer.close(timeout=5) == 0
    assert [len(batch) for batch in refusing.batches] == [6, 6, 6, 6]
    assert recorder.outcomes == {("tokens", "api", "stored"): 6}


async def test_a_data_error_that_does_not_repeat_splits_nothing(store: SqliteStore) -> None:
    class Once(Refusing):
        async def append(self, events: Sequence[UsageEvent], now_ms: int) -> AppendResult:
            if not self.batches:
                self.batches.append([])
                raise StoreError("a refusal that does not come back")
            return await super().append(events, now_ms)

    once = Once(store, set())
    writer = writer_for(once)
    async with running(writer):
        result = await writer.submit_durable(events("e", 4))
    assert result.stored == (True,) * 4
    assert [len(batch) for batch in once.batches] == [0, 4]


async def test_a_transient_failure_inside_the_split_is_retried(store: SqliteStore) -> None:
    class FillsUp(Refusing):
        """The disk fills up (two appends) once the whole batch has failed twice."""

        async def append(self, events: Sequence[UsageEvent], now_ms: int) -> AppendResult:
            if len(self.batches) == 2:
                self.transient_first = 2
            return await super().append(events, now_ms)

    refusing = FillsUp(store, {"e0"})
    writer = writer_for(refusing)
    async with running(writer):
        with pytest.raises(EventsRejected):
            await writer.submit_durable(events("e", 4))
    assert await stored_ids(store) == {"e1", "e2", "e3"}
    # whole twice, the first half while full (twice), then again; e0 alone; the second half
    assert [len(b) for b in refusing.batches] == [4, 4, 2, 2, 2, 1, 1, 2]


async def test_a_real_refusal_by_sqlite_is_isolated(store: SqliteStore, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "p.db") as conn:  # a constraint: a data error
        conn.execute("CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.event_id = 'e3'"
                     " BEGIN SELECT RAISE(ABORT, 'poison'); END")
    recorder = Recorder()
    writer = writer_for(store, recorder)
    async with running(writer):
        with pytest.raises(EventsRejected) as refused:
            await writer.submit_durable(events("e", 5))
    assert refused.value.event_ids == ("e3",)
    assert "poison" in str(refused.value.error)
    assert await stored_ids(store) == {"e0", "e1", "e2", "e4"}
    assert recorder.outcomes[("tokens", "api", "rejected")] == 1


async def check_isolation(path: Path, count: int, poison: set[int]) -> None:
    store = await opened(path, METERS)
    try:
        refusing = Refusing(store, {f"e{i}" for i in poison})
        recorder = Recorder()
        writer = writer_for(refusing, recorder)
        async with running(writer):
            writer.submit(events("e", count))
            assert await writer.close(timeout=10) == 0
        assert await stored_ids(store) == {f"e{i}" for i in range(count) if i not in poison}
        assert recorder.outcomes[("tokens", "api", "rejected")] == len(poison)
        # Each poison event costs at most two appends per halving (log2(count) of them).
        assert len(refusing.batches) <= 2 + 2 * len(poison) * count.bit_length()
    finally:
        await store.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), count=st.integers(1, 40))
def test_any_poison_events_are_found_and_nothing_else_is_lost(
    data: st.DataObject, count: int
) -> None:
    poison = data.draw(st.sets(st.integers(0, count - 1), max_size=count))
    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(check_isolation(Path(workdir) / "p.db", count, poison))
