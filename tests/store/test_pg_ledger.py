"""The billing tables on PostgreSQL (pg_ledger.py, pg_snapshot.py, pg migration 0002): what the
engine tests of tests/billing (run on both engines) cannot see from outside: the schema that
keeps final statements, the fleet's billing lock, and closes that die half way, as a replica
dying mid-close would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from decimal import Decimal

import asyncpg  # type: ignore[import-untyped]
import pytest

from billing.credits import CreditGrant
from billing.cycles import bucket_ms
from billing.engine import StatementEngine
from billing.plans import BillingSettings
from billing.record_codec import decode
from billing.store.ledger import CustomerWrite, LedgerStore, PlanAssignment, StatementWrite
from billing.store.pg_connection import StoreUnreachable
from billing.store.pg_ledger import BILLING_LOCK
from billing.store.postgres import PostgresStore
from billing.verify import verify
from tests.billing.test_engine_kit import (
    DAY,
    FEB,
    GRACE,
    JAN,
    METERS,
    PLANS,
    UTC,
    Clock,
    event,
    statement_id_of,
)
from tests.store.backends import PostgresBackend
from tests.store.test_postgres import terminate_the_waiting_session

D = Decimal


@dataclass
class PgBilling:
    """A PostgresStore and a statement engine on one database, sharing a test clock."""

    url: str
    clock: Clock
    store: PostgresStore
    engine: StatementEngine

    async def close(self, at: int) -> tuple[int, int]:
        """Move the clock to `at` and run; (drafted, finalized)."""
        self.clock.now = at
        result = await self.engine.close()
        return result.drafted, result.finalized


async def open_billing(url: str, clock: Clock, write_batch: int = 500) -> PgBilling:
    store = PostgresStore(url, METERS, bucket_ms([p.cycle for p in PLANS], UTC), clock=clock)
    await store.open()
    engine = StatementEngine(store, PLANS, BillingSettings("examples", UTC, GRACE),
                             [m.name for m in METERS], clock=clock, write_batch=write_batch)
    await engine.open()
    return PgBilling(url, clock, store, engine)


@pytest.fixture
async def billing(pg: PostgresBackend) -> AsyncIterator[PgBilling]:
    b = await open_billing(await pg.location(), Clock())
    yield b
    await b.store.close()


async def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(sql)]
    finally:
        await conn.close()


async def every_statement(store: PostgresStore) -> list[object]:
    return list(await store.list_statements(customer_id=None, status=None,
                                            finalized_after_ms=None, limit=1000))


def test_the_postgresql_store_implements_the_whole_interface() -> None:
    store: LedgerStore = PostgresStore("postgresql://db/unused", METERS, 1000)
    assert isinstance(store, LedgerStore)


async def test_the_schema_keeps_final_statements_and_their_burns(billing: PgBilling) -> None:
    await billing.store.ensure_customer("c", JAN.start_ms)
    await billing.store.add_grant("c", CreditGrant("g", "api_calls", D(5), 0, None, 0))
    await billing.store.append([event("c", "api.call", JAN.start_ms + i) for i in range(1003)],
                               JAN.start_ms + DAY)
    await billing.close(JAN.end_ms + GRACE)
    assert await rows(billing.url, "SELECT count(*) FROM statements WHERE status = 'final'") == [
        (1,)]
    assert await rows(billing.url, "SELECT credits FROM credit_burns") == [("3",)]
    conn = await asyncpg.connect(billing.url)
    try:
        for attempt in ("UPDATE statements SET total_minor = 0",
                        "UPDATE statements SET status = 'draft', finalized_at_ms = NULL",
                        "DELETE FROM statements", "DELETE FROM credit_burns",
                        "UPDATE credit_burns SET credits = '0'"):
            with pytest.raises(asyncpg.RaiseError, match="final"):
                await conn.execute(attempt)
    finally:
        await conn.close()


async def test_a_draft_is_replaced_with_its_burns_and_never_by_an_older_cutoff(
    billing: PgBilling
) -> None:
    store = billing.store
    await store.ensure_customer("c", JAN.start_ms)
    await store.add_grant("c", CreditGrant("g", "api_calls", D(5000), 0, None, 0))
    await store.append([event("c", "api.call", JAN.start_ms + i) for i in range(1002)],
                       JAN.start_ms + DAY)
    assert await billing.close(JAN.end_ms) == (1, 0)
    await store.append([event("c", "api.call", JAN.start_ms + DAY)], JAN.end_ms + 1)
    await billing.close(JAN.end_ms + 2)
    assert await rows(billing.url, "SELECT credits FROM credit_burns") == [("3",)]
    assert await rows(billing.url, "SELECT cutoff_ms FROM statements") == [(JAN.end_ms + 1,)]
    stored = await store.get_statement(statement_id_of("c", JAN))
    assert stored is not None
    older = StatementWrite(replace(stored.head, cutoff_ms=JAN.end_ms), "USD", 999, None,
                           stored.record)
    assert (await store.write_statements([CustomerWrite("c", None, (older,))])).drafted == 0
    assert await store.get_statement(stored.head.statement_id) == stored
    moved = CustomerWrite("c", JAN.start_ms - 1, (replace(older, head=stored.head),))
    assert (await store.write_statements([moved])).skipped == 1


async def test_migration_0002_keeps_the_plans_already_set(pg: PostgresBackend) -> None:
    url = await pg.location()
    await pg.at_version(url, 1)
    await pg.execute(url, "INSERT INTO customers VALUES ('c', 42, 'pro', NULL),"
                          " ('d', 43, NULL, NULL)")
    store = PostgresStore(url, METERS, 1000)
    await store.open()
    try:
        async with store.billing_snapshot() as snap:
            assert await snap.assignments() == {"c": [PlanAssignment(42, "pro")]}
    finally:
        await store.close()


async def test_late_usage_is_read_through_the_partial_index(billing: PgBilling) -> None:
    await billing.store.append([event("c", "api.call", FEB.start_ms)], FEB.start_ms + 1)
    await billing.store.append([event("c", "api.call", JAN.start_ms)], FEB.start_ms + 2)
    conn = await asyncpg.connect(billing.url)
    try:
        await conn.execute("ANALYZE events; SET enable_seqscan = off")
        plan = await conn.fetch(
            "EXPLAIN SELECT min(timestamp_ms) FROM events WHERE customer_id = 'c'"
            " AND ingested_at_ms > 5 AND ingested_at_ms - timestamp_ms > 300000"
            " AND timestamp_ms < 10")
        assert "events_late" in str(plan)
        indexed = await conn.fetchval(
            "SELECT count(*) FROM events WHERE ingested_at_ms - timestamp_ms > 300000")
        assert indexed == 1  # only the event that waited a month
    finally:
        await conn.close()


# ------------------------------------------------------------ closing once, fleet-wide


async def test_statement_writes_wait_for_the_fleets_billing_lock(billing: PgBilling) -> None:
    await billing.store.append([event("c", "api.call", JAN.start_ms + DAY)], JAN.start_ms + DAY)
    other = await asyncpg.connect(billing.url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT pg_advisory_xact_lock($1)", BILLING_LOCK)  # another replica
        run = asyncio.ensure_future(billing.close(JAN.end_ms + GRACE))
        await a_session_waits_for_a_lock(other)
        assert not run.done()
        assert await every_statement(billing.store) == []
        await tx.rollback()
        assert await run == (0, 1)
    finally:
        await other.close()


async def a_session_waits_for_a_lock(conn: asyncpg.Connection) -> None:
    """Return once a session of this database waits for a lock (polled: the server tells no
    one when a session starts waiting)."""
    for _ in range(3000):
        if await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname ="
                               " current_database() AND wait_event_type = 'Lock'"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no session came to wait for a lock")


async def test_replicas_closing_together_finalise_each_statement_once(
    pg: PostgresBackend
) -> None:
    url = await pg.location()
    clock = Clock()
    replicas = [await open_billing(url, clock, write_batch=3) for _ in range(3)]
    try:
        await replicas[0].store.append(
            [event(f"c{i}", "api.call", JAN.start_ms + i * DAY) for i in range(10)],
            JAN.start_ms + 20 * DAY)
        clock.now = JAN.end_ms + GRACE
        results = await asyncio.gather(*(r.engine.close() for r in replicas * 2))
        assert sum(r.finalized for r in results) == 10
        assert sum(r.drafted for r in results) == 0
        assert await rows(url, "SELECT count(DISTINCT (customer_id, period_start_ms)),"
                               " count(*) FROM statements WHERE status = 'final'") == [(10, 10)]
    finally:
        for replica in replicas:
            await replica.store.close()


async def test_a_replica_dying_mid_close_leaves_nothing_half_written(pg: PostgresBackend) -> None:
    """Its session ends while its statement write waits for the lock: nothing of that write
    is stored, and the next run, on another replica, writes the same statements as a clean
    close does."""
    url = await pg.location()
    clean_url = await pg.location()
    clock = Clock()
    dying, survivor = await open_billing(url, clock), await open_billing(url, clock)
    clean = await open_billing(clean_url, clock)
    events = [event(f"c{i}", "api.call", JAN.start_ms + i * DAY) for i in range(6)]
    other = await asyncpg.connect(url)
    try:
        for b in (dying, clean):
            await b.store.append(events, JAN.start_ms + 10 * DAY)
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT pg_advisory_xact_lock($1)", BILLING_LOCK)
        run = asyncio.ensure_future(dying.close(JAN.end_ms + GRACE))
        await terminate_the_waiting_session(other)
        with pytest.raises(StoreUnreachable):
            await run
        await tx.rollback()
        assert await every_statement(survivor.store) == []
        assert await survivor.close(JAN.end_ms + GRACE) == (0, 6)
        assert await clean.close(JAN.end_ms + GRACE) == (0, 6)
        assert await records(survivor.store) == await records(clean.store)
    finally:
        await other.close()
        for b in (dying, survivor, clean):
            await b.store.close()


async def records(store: PostgresStore) -> list[object]:
    """Every stored statement's content (finalisation times aside)."""
    return [decode(s.record).statement for s in await store.list_statements(
        customer_id=None, status=None, finalized_after_ms=None, limit=1000)]


@pytest.mark.parametrize("written", [0, 1, 3])
async def test_a_close_cancelled_half_way_is_completed_with_the_same_numbers(
    pg: PostgresBackend, written: int
) -> None:
    """One customer per write transaction; the run is cancelled once `written` are committed,
    its store closed as a dying process's would be."""
    clock = Clock()
    crashed, clean = [await open_billing(await pg.location(), clock, write_batch=1)
                      for _ in range(2)]
    events = [event(f"c{i}", "api.call", JAN.start_ms + i * DAY) for i in range(5)]
    for b in (crashed, clean):
        await b.store.append(events, JAN.start_ms + 10 * DAY)
    clock.now = JAN.end_ms + GRACE
    task = asyncio.ensure_future(crashed.engine.close())
    while not task.done() and len(await every_statement(crashed.store)) < written:  # noqa: ASYNC110
        await asyncio.sleep(0.001)  # polls the database; asserts nothing about time
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await crashed.store.close()
    again = await open_billing(crashed.url, clock)
    try:
        await again.close(JAN.end_ms + GRACE)
        await clean.close(JAN.end_ms + GRACE)
        assert await records(again.store) == await records(clean.store)
        assert len(await records(again.store)) == 5
    finally:
        await again.store.close()
        await clean.store.close()


async def test_verify_recomputes_from_the_raw_events_and_finds_damaged_aggregates(
    billing: PgBilling
) -> None:
    await billing.store.append([event(c, "api.call", JAN.start_ms + i * DAY)
                                for c in "ab" for i in range(3)], JAN.start_ms + 5 * DAY)
    await billing.close(JAN.end_ms + GRACE)
    assert [d async for d in verify(billing.store, UTC)] == [None, None]
    await billing.store.append([event(c, "api.call", FEB.start_ms + DAY) for c in "ab"],
                               FEB.start_ms + 2 * DAY)
    conn = await asyncpg.connect(billing.url)
    try:  # five calls too many in b's February aggregates, which its statement reads
        await conn.execute("UPDATE meter_aggregates SET count = count + 5, value = value + 5"
                           f" WHERE customer_id = 'b' AND bucket_start_ms >= {FEB.start_ms}")
    finally:
        await conn.close()
    await billing.close(FEB.end_ms + GRACE)
    found = [d for d in [d async for d in verify(billing.store, UTC)] if d is not None]
    assert [d.customer_id for d in found] == ["b"]
    assert found[0].problems[0].startswith("line api_calls: quantity 6 -> 1")
