"""The epoch-first events index (billing/store/epochs.py) on both engines: every read that
seeks a customer's events finds the same events whichever epochs they were stored in, late
ones included, and `event_epochs` covers every stored event's timestamp.

Filling an epoch (2^14 events on SQLite, 2^18 on PostgreSQL) would make each case slow, so
`skip_to` moves the store's numbering to just before an epoch boundary behind its back: the
next append's events are numbered from there, as they would be after that many events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.cycles import Period
from billing.events import StoredEvent, UsageEvent
from billing.meters import quantity
from billing.store import postgres, sqlite_snapshot
from billing.store.base import Store
from billing.store.epochs import PG_EPOCH_BITS, SQLITE_EPOCH_BITS, epoch_ranges
from billing.store.ledger import LateProbe, LedgerStore
from billing.store.sqlite_snapshot import LATE_LAG_MS
from tests.store.backends import ENGINES, Backend, PostgresBackend, make_backend
from tests.store.factories import BUCKET, DAY, METERS, event, opened
from tests.store.test_store_contract import brute_force, comparable, everything, observed

BITS = {"sqlite": SQLITE_EPOCH_BITS, "postgres": PG_EPOCH_BITS}


def epoch_size(backend: Backend) -> int:
    """How many events an epoch of the backend's engine holds."""
    return 1 << BITS[backend.engine]


async def skip_to(backend: Backend, location: str, last_seq: int) -> None:
    """Make the store number its next event `last_seq` + 1. SQLite numbers after its largest
    seq, so a filler event of its own customer takes `last_seq` (with its epoch's row, as an
    append would write it); PostgreSQL numbers after its counter."""
    if backend.engine == "postgres":
        await backend.execute(location, f"UPDATE ingest_counter SET last_seq = {last_seq}")
        return
    await backend.execute(location, f"""
        INSERT INTO events (seq, event_id, customer_id, event_name, timestamp_ms, metadata,
                            source, ingested_at_ms)
        SELECT {last_seq}, 'filler-{last_seq}', 'filler', 'filler', 0, '{{}}', 'api',
               coalesce(max(ingested_at_ms), 0) FROM events""")
    await backend.execute(location, f"""
        INSERT INTO event_epochs VALUES ({last_seq >> SQLITE_EPOCH_BITS}, 0, 0) ON CONFLICT (epoch)
        DO UPDATE SET min_ts_ms = min(min_ts_ms, 0), max_ts_ms = max(max_ts_ms, 0)""")


async def uncovered(backend: Backend, location: str) -> list[tuple[Any, ...]]:
    """Stored events whose timestamp lies outside their epoch's row (none should)."""
    return await backend.rows(location, f"""
        SELECT e.seq, e.timestamp_ms FROM events AS e
        LEFT JOIN event_epochs AS p ON p.epoch = e.seq / {epoch_size(backend)}
        WHERE p.epoch IS NULL OR e.timestamp_ms < p.min_ts_ms OR e.timestamp_ms > p.max_ts_ms""")


def test_epoch_ranges_split_an_append_at_epoch_boundaries() -> None:
    stamps = [50, 10, 70, 5, 90, 30, 20]
    events = [event(f"e{i}", ts=ts) for i, ts in enumerate(stamps)]
    for bits in (SQLITE_EPOCH_BITS, PG_EPOCH_BITS):
        size = 1 << bits
        # seqs size - 3 .. size + 3: three in epoch 0, four in epoch 1
        assert epoch_ranges(size - 3, events, bits) == [(0, 10, 70), (1, 5, 90)]
        assert epoch_ranges(size, events, bits) == [(1, 5, 90)]
        assert epoch_ranges(2 * size - 1, events[:1], bits) == [(1, 50, 50)]
        assert epoch_ranges(7, [], bits) == []


# ----------------------------------------------------- one append across a boundary


async def test_an_append_across_epochs_is_read_whole(backend: Backend, location: str) -> None:
    store = await opened(backend, location)
    try:
        await store.append([event("old", ts=100, n=1)], now_ms=1)
        await skip_to(backend, location, epoch_size(backend) - 3)
        # seqs size - 2 .. size + 2: e3 (seq size + 1) takes an early timestamp to epoch 1
        stamps = [2 * DAY, 2 * DAY + 10, 2 * DAY + 20, 150, 2 * DAY + 1500]
        await store.append([event(f"e{i}", ts=ts, n=i + 2) for i, ts in enumerate(stamps)],
                           now_ms=2)
        assert await uncovered(backend, location) == []
        epochs = await backend.rows(location, "SELECT * FROM event_epochs ORDER BY epoch")
        assert epochs == [(0, 0 if backend.engine == "sqlite" else 100, 2 * DAY + 10),
                          (1, 150, 2 * DAY + 1500)]
        # [100, 1100) is an unaligned edge before the first whole bucket: raw reads only
        agg = await store.meter_aggregate("tokens_sum", "c1", 100, 1100)
        assert agg is not None and (agg.count, agg.value) == (2, Decimal(1 + 5))
        page = await store.list_events(customer_id="c1", start_ms=100, end_ms=2 * DAY + 15,
                                       limit=10)
        assert [s.event.event_id for s in page] == ["e1", "e0", "e3", "old"]
    finally:
        await store.close()


# ------------------------------------------------- every read, against brute force


@st.composite
def epoch_batches(draw: st.DrawFn) -> list[tuple[int | None, list[UsageEvent]]]:
    """Batches, each stored after skipping to just before the next epoch boundary (the
    number of events left in the epoch) or right after the previous batch (None)."""
    ids = iter(range(10_000))
    batches = []
    for _ in range(draw(st.integers(1, 4))):
        left = draw(st.one_of(st.none(), st.integers(1, 3)))
        batch = [
            event(f"e{next(ids)}", draw(st.sampled_from(["c1", "c2"])),
                  draw(st.sampled_from(["api.call", "tokens"])),
                  draw(st.integers(-DAY, 2 * DAY)), n=draw(st.integers(-5, 9)))
            for _ in range(draw(st.integers(1, 6)))
        ]
        batches.append((left, batch))
    return batches


RANGES = [(-DAY, 2 * DAY + 1), (-DAY + 1, DAY - 1), (1_500, 2_700), (0, BUCKET),
          (DAY - 1, DAY + 1)]


def newest_first(stored: Sequence[StoredEvent], customer: str, start: int,
                 end: int) -> list[str]:
    inside = [s for s in stored
              if s.event.customer_id == customer and start <= s.event.timestamp_ms < end]
    inside.sort(key=lambda s: (s.event.timestamp_ms, s.seq), reverse=True)
    return [s.event.event_id for s in inside]


async def check_reads(backend: Backend,
                      batches: list[tuple[int | None, list[UsageEvent]]]) -> None:
    location = await backend.location()
    store = await opened(backend, location)
    size = epoch_size(backend)
    try:
        for stamp, (left, batch) in enumerate(batches, 1):
            if left is not None:
                last = max((s.seq for s in await everything(store)), default=0)
                target = (last // size + 1) * size - left - 1
                await skip_to(backend, location, target if target > last else target + size)
            await store.append(batch, now_ms=stamp)
        assert await uncovered(backend, location) == []
        stored = [s for s in await everything(store) if s.event.customer_id != "filler"]
        for customer in ("c1", "c2"):
            for start, end in RANGES:
                page = await store.list_events(customer_id=customer, start_ms=start,
                                               end_ms=end, limit=100)
                assert [s.event.event_id for s in page] == newest_first(
                    stored, customer, start, end)
                await check_quantities(store, stored, customer, start, end)
    finally:
        await store.close()


async def check_quantities(store: Store, stored: Sequence[StoredEvent], customer: str,
                           start: int, end: int) -> None:
    """meter_aggregate, the billing snapshot's quantities and raw_quantities: each equals
    the brute force over the stored events."""
    assert isinstance(store, LedgerStore)
    period = Period(start, end)
    raw = await store.raw_quantities(customer, [m.name for m in METERS], period, 1 << 62)
    # one snapshot read for the customer (raw events at the period's unaligned edges)
    async with store.billing_snapshot() as snap:
        snapped = await snap.quantities([m.name for m in METERS], [customer], period)
    for m in METERS:
        expected = brute_force(m, stored, customer, start, end)
        agg = await store.meter_aggregate(m.name, customer, start, end)
        assert comparable(m, observed(m, agg)) == comparable(m, expected)
        want = None if expected is None else expected[1]
        assert snapped[m.name].get(customer) == want
        assert raw[m.name] == quantity(m.aggregation, agg)


async def with_backend(engine: str, batches: list[tuple[int | None, list[UsageEvent]]],
                       directory: Path) -> None:
    backend = make_backend(engine, directory)
    try:
        await check_reads(backend, batches)
    finally:
        await backend.dispose()


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=epoch_batches())
def test_reads_across_epochs_equal_a_brute_force(
    engine: str, batches: list[tuple[int | None, list[UsageEvent]]], tmp_path_factory: Any
) -> None:
    directory = tmp_path_factory.mktemp("epochs")
    asyncio.run(with_backend(engine, batches, directory))


# ------------------------------------------------------------------ late usage


async def test_late_usage_is_found_in_a_later_epoch(backend: Backend, location: str) -> None:
    store = await opened(backend, location)
    try:
        await store.append([event("on-time", ts=DAY)], now_ms=DAY)
        await skip_to(backend, location, 3 * epoch_size(backend) + 7)
        await store.append([event("late", ts=DAY + 5)], now_ms=DAY + 60_000)
        assert isinstance(store, LedgerStore)
        async with store.billing_snapshot() as snap:
            found = await snap.late_since([LateProbe("c1", DAY + 1, DAY + BUCKET)])
        assert LATE_LAG_MS > 60_000  # found through the recent read, not events_late
        assert found == {"c1": DAY + 5}
    finally:
        await store.close()


# ------------------------------------------------------------------ query plans


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_sqlite_seeks_the_epoch_index(backend: Backend, location: str) -> None:
    await (await opened(backend, location)).close()

    plan = await backend.rows(location, "EXPLAIN QUERY PLAN "
                              + sqlite_snapshot._RAW_EDGE.replace("?1", "'[\"c1\"]'")
                              .replace("?2", "'tokens'").replace("?3", "0").replace("?4", "9"))
    details = " ".join(str(row[-1]) for row in plan)
    assert "USING INDEX events_by_epoch_customer_name_time (epoch=? AND customer_id=?" in details


async def test_postgres_seeks_the_epoch_index(pg: PostgresBackend, url: str) -> None:
    store = await opened(pg, url)
    try:
        await store.append([event(f"e{i}", f"c{i % 50}", ts=i) for i in range(2_000)], 1)
    finally:
        await store.close()

    await pg.execute(url, "ANALYZE events")
    plan = await pg.rows(url, "EXPLAIN " + postgres._RAW_RANGE.replace("$1", "'c1'")
                         .replace("$2", "'tokens'").replace("$3", "0").replace("$4", "9"))
    assert "events_by_epoch_customer_name_time" in str(plan)


# ------------------------------------------------------------------ the upgrade


async def test_migration_0005_indexes_stored_events_by_epoch(
    backend: Backend, location: str
) -> None:
    await backend.at_version(location, 4)
    size = epoch_size(backend)  # SQLite: after 0006 too, which narrows its epochs
    stored = [(1, 500), (2, 100), (size + 2, 90), (3 * size, 7000), (3 * size + 1, 6000)]
    values = ", ".join(f"({seq}, 'e{seq}', 'c1', 'tokens', {ts}, '{{\"n\": 1}}', 'api', 1)"
                       for seq, ts in stored)
    await backend.execute(location, "INSERT INTO events (seq, event_id, customer_id,"
                          " event_name, timestamp_ms, metadata, source, ingested_at_ms)"
                          f" VALUES {values}")
    if backend.engine == "postgres":
        await backend.execute(location, f"UPDATE ingest_counter SET last_seq = {3 * size + 1}")
    store = await opened(backend, location)
    try:
        assert await backend.rows(location, "SELECT * FROM event_epochs ORDER BY epoch") == [
            (0, 100, 500), (1, 90, 90), (3, 6000, 7000)]
        page = await store.list_events(customer_id="c1", start_ms=90, end_ms=6001, limit=10)
        assert [s.seq for s in page] == [3 * size + 1, 1, 2, size + 2]
        await store.append([event("new", ts=95, n=1)], now_ms=2)
        assert await uncovered(backend, location) == []
    finally:
        await store.close()
    indexes = await backend.rows(location, INDEXES[backend.engine])
    assert "events_by_epoch_customer_name_time" in {name for (name,) in indexes}
    assert "events_by_customer_name_time" not in {name for (name,) in indexes}


INDEXES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'",
    "postgres": "SELECT indexname FROM pg_indexes WHERE tablename = 'events'",
}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_migration_0006_renumbers_sqlite_epochs(backend: Backend, location: str) -> None:
    """Events stored under 0005's 2^18-event epochs: 0006 files them under 2^14-event
    epochs, in the index and in event_epochs, and reads find them as before."""
    await backend.at_version(location, 5)
    narrow, wide = 1 << SQLITE_EPOCH_BITS, 1 << 18
    stored = [(1, 500), (narrow - 1, 100), (narrow, 90), (wide + 5, 7000), (wide + 6, 6000)]
    values = ", ".join(f"({seq}, 'e{seq}', 'c1', 'tokens', {ts}, '{{\"n\": 1}}', 'api', 1)"
                       for seq, ts in stored)
    await backend.execute(location, "INSERT INTO events (seq, event_id, customer_id,"
                          " event_name, timestamp_ms, metadata, source, ingested_at_ms)"
                          f" VALUES {values}")
    await backend.execute(location, "INSERT INTO event_epochs VALUES (0, 90, 500), (1, 6000, 7000)")
    store = await opened(backend, location)
    try:
        assert await backend.rows(location, "SELECT * FROM event_epochs ORDER BY epoch") == [
            (0, 100, 500), (1, 90, 90), (wide // narrow, 6000, 7000)]
        assert await uncovered(backend, location) == []
        page = await store.list_events(customer_id="c1", start_ms=90, end_ms=6001, limit=10)
        assert [s.seq for s in page] == [wide + 6, 1, narrow - 1, narrow]
        agg = await store.meter_aggregate("tokens_sum", "c1", 95, 6001)
        assert agg is not None and (agg.count, agg.value) == (3, Decimal(3))
    finally:
        await store.close()
    plan = await backend.rows(location, "EXPLAIN QUERY PLAN SELECT seq FROM events"
                              " WHERE epoch = 1 AND customer_id = 'c1'")
    assert "events_by_epoch_customer_name_time" in " ".join(str(row[-1]) for row in plan)
