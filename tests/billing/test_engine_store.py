"""The billing tables of the SQLite store (billing/store/sqlite_ledger.py, migration 0002):
idempotent grants and adjustments, plan and cycle history, DELETE, and final statements that
the schema itself keeps from changing."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.credits import CreditGrant
from billing.cycles import Period
from billing.events import UsageEvent
from billing.meters import quantity
from billing.statement import ManualAdjustment
from billing.store.base import Customer
from billing.store.ledger import (
    AdjustmentEntry,
    Conflict,
    CustomerWrite,
    CycleRecord,
    LedgerStore,
    PlanAssignment,
    StatementWrite,
    WriteResult,
)
from billing.store.sqlite import SqliteStore
from tests.billing.test_engine_kit import (
    DAY,
    FEB,
    GRACE,
    HOUR,
    JAN,
    METERS,
    Billing,
    event,
    open_billing,
)
from tests.store.backends import SqliteBackend

D = Decimal


@pytest.fixture
async def billing(tmp_path: Path) -> AsyncIterator[Billing]:
    b = await open_billing(tmp_path / "ledger.db")
    yield b
    await b.store.close()


def sql(path: Path, statement: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(statement, params).fetchall()


def test_the_sqlite_store_implements_the_whole_interface(tmp_path: Path) -> None:
    store: LedgerStore = SqliteStore(str(tmp_path / "s.db"), METERS, 1000)  # mypy: structurally
    assert isinstance(store, LedgerStore)


async def test_a_grant_retried_returns_the_first_and_a_different_one_conflicts(
    billing: Billing
) -> None:
    await billing.store.ensure_customer("c", 1)
    grant = CreditGrant("g1", "tokens", D("10.5"), 5, None, 7)
    assert await billing.store.add_grant("c", grant) == (grant, True)
    later = CreditGrant("g1", "tokens", D("10.50"), 5, None, 99)  # same fields, retried later
    assert await billing.store.add_grant("c", later) == (grant, False)
    with pytest.raises(Conflict):
        await billing.store.add_grant("c", CreditGrant("g1", "tokens", D(11), 5, None, 7))
    [balance] = await billing.store.grant_balances("c")
    assert (balance.grant, balance.burned) == (grant, D(0))


async def test_an_adjustment_retried_returns_the_first_and_a_different_one_conflicts(
    billing: Billing
) -> None:
    await billing.store.ensure_customer("c", 1)
    first = ManualAdjustment("a1", D("-2.5"), "Refund", 10)
    assert await billing.store.add_adjustment("c", first) == (AdjustmentEntry(first, None), True)
    retried = ManualAdjustment("a1", D("-2.50"), "Refund", 20)
    assert await billing.store.add_adjustment("c", retried) == (
        AdjustmentEntry(first, None), False)
    with pytest.raises(Conflict):
        await billing.store.add_adjustment("c", ManualAdjustment("a1", D(-2), "Refund", 30))
    assert await billing.store.list_adjustments("c") == [AdjustmentEntry(first, None)]


async def test_plan_assignments_replace_those_from_then_on(billing: Billing) -> None:
    store = billing.store
    assert await store.assign_plan("c", "basic", 100, now_ms=100) == Customer(
        "c", 100, "basic", None)
    await store.assign_plan("c", "pro", 500, now_ms=200)
    await store.assign_plan("c", "weekly", 900, now_ms=300)
    customer = await store.assign_plan("c", "examples", 500, now_ms=400)
    assert customer.plan == "examples"
    async with store.billing_snapshot() as snap:
        assert await snap.assignments(["c"]) == {
            "c": [PlanAssignment(100, "basic"), PlanAssignment(500, "examples")]}
    assert await store.set_customer_plan("c", None, now_ms=600) == Customer("c", 100, None, None)


async def test_cycle_records_are_kept_only_when_they_change(billing: Billing) -> None:
    store = billing.store
    later = JAN.start_ms + DAY  # the engine recorded every plan when it opened, at JAN
    first = await store.record_cycles([CycleRecord("basic", later, "monthly", "UTC")])
    again = await store.record_cycles([CycleRecord("basic", later + 1, "monthly", "UTC")])
    assert again == first
    changed = await store.record_cycles([CycleRecord("basic", later + 2, "weekly", "UTC")])
    assert changed == [*first, CycleRecord("basic", later + 2, "weekly", "UTC")]


async def test_delete_marks_the_customer_once_and_revokes_its_keys(billing: Billing) -> None:
    store = billing.store
    await store.add_key("c", "k1", b"\x01" * 32, "sk_aaaaa", now_ms=10)
    version = await store.keys_version()
    assert await store.delete_customer("c", now_ms=20) == Customer("c", 10, None, 20)
    assert await store.delete_customer("c", now_ms=30) == Customer("c", 10, None, 20)
    assert await store.active_key_hashes() == {}
    assert await store.keys_version() == version + 1
    assert await store.delete_customer("nobody", now_ms=40) is None


async def test_the_schema_keeps_final_statements_and_their_burns(billing: Billing) -> None:
    await billing.store.ensure_customer("c", JAN.start_ms)
    await billing.store.add_grant("c", CreditGrant("g", "api_calls", D(5), 0, None, 0))
    await billing.append([event("c", "api.call", JAN.start_ms + i) for i in range(1003)])
    await billing.close(JAN.end_ms + GRACE)
    path = billing.path
    assert sql(path, "SELECT COUNT(*) FROM statements WHERE status = 'final'") == [(1,)]
    assert sql(path, "SELECT credits FROM credit_burns") == [("3",)]  # 1,000 are free
    for attempt in ("UPDATE statements SET total_minor = 0",
                    "UPDATE statements SET status = 'draft', finalized_at_ms = NULL",
                    "DELETE FROM statements", "DELETE FROM credit_burns"):
        with pytest.raises(sqlite3.IntegrityError, match="final"):
            sql(path, attempt)


async def test_a_draft_is_replaced_with_its_burns_and_never_by_an_older_cutoff(
    billing: Billing
) -> None:
    await billing.store.ensure_customer("c", JAN.start_ms)
    await billing.store.add_grant("c", CreditGrant("g", "api_calls", D(5000), 0, None, 0))
    await billing.append([event("c", "api.call", JAN.start_ms + i) for i in range(1002)],
                         JAN.start_ms + DAY)
    assert await billing.close(JAN.end_ms) == (1, 0)
    await billing.append([event("c", "api.call", JAN.start_ms + DAY)], JAN.end_ms + 1)
    await billing.close(JAN.end_ms + 2)
    assert sql(billing.path, "SELECT credits FROM credit_burns") == [("3",)]
    [(cutoff,)] = sql(billing.path, "SELECT cutoff_ms FROM statements")
    assert cutoff == JAN.end_ms + 1
    # a run on an older snapshot (another process, slower) cannot put its draft back
    stored = await billing.store.get_statement((await billing.statement("c", JAN)).id)
    assert stored is not None
    older = StatementWrite(replace(stored.head, cutoff_ms=cutoff - 1), "USD", 999, None,
                           stored.record)
    written = await billing.store.write_statements([CustomerWrite("c", None, (older,))])
    assert written == WriteResult(0, 0, 0)
    assert await billing.store.get_statement(stored.head.statement_id) == stored
    # nor can one that saw another final head than the store holds now
    moved = CustomerWrite("c", JAN.start_ms - 1, (replace(older, head=stored.head),))
    assert await billing.store.write_statements([moved]) == WriteResult(0, 0, 1)


async def test_migration_0002_keeps_the_plans_already_set(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    await SqliteBackend(tmp_path).at_version(str(path), 1)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO customers VALUES ('c', 42, 'pro', NULL), ('d', 43, NULL, NULL)")
    store = SqliteStore(str(path), METERS, 1000)
    await store.open()
    try:
        async with store.billing_snapshot() as snap:
            assert await snap.assignments() == {"c": [PlanAssignment(42, "pro")]}
    finally:
        await store.close()


async def test_late_usage_is_read_through_the_partial_index(billing: Billing) -> None:
    plan = sql(billing.path,
               "EXPLAIN QUERY PLAN SELECT MIN(timestamp_ms) FROM events WHERE customer_id = 'c'"
               " AND ingested_at_ms > 5 AND ingested_at_ms - timestamp_ms > 300000"
               " AND timestamp_ms < 10")
    assert "events_late" in str(plan)
    await billing.append([event("c", "api.call", FEB.start_ms)], FEB.start_ms + 1)
    await billing.append([event("c", "api.call", JAN.start_ms)], FEB.start_ms + 2)
    indexed = sql(billing.path, "SELECT COUNT(*) FROM events INDEXED BY events_late"
                                " WHERE ingested_at_ms - timestamp_ms > 300000")
    assert indexed == [(1,)]  # only the event that waited a month


# -------------------------------------------------------------- snapshot reads

stamps = st.integers(JAN.start_ms - 2 * HOUR, JAN.start_ms + 3 * DAY)


@st.composite
def metered(draw: st.DrawFn) -> list[UsageEvent]:
    kinds = {"api.call": None, "bandwidth": "bytes", "seats.reported": "seats",
             "storage.snapshot": "gb"}
    found = []
    for i in range(draw(st.integers(0, 40))):
        name = draw(st.sampled_from(sorted(kinds)))
        key = kinds[name]
        value = draw(st.sampled_from([D(1), D("2.0"), D("-3.25"), D(7), D("1e3")]))
        found.append(UsageEvent(f"q{i}", draw(st.sampled_from("xyz")), name, draw(stamps),
                                {} if key is None else {key: value}))
    return found


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=metered(), bounds=st.tuples(stamps, stamps),
       batch=st.integers(1, 40))
def test_snapshot_quantities_equal_the_store_aggregates(
    events: list[UsageEvent], bounds: tuple[int, int], batch: int
) -> None:
    start, end = sorted(bounds)
    periods = [Period(JAN.start_ms, JAN.start_ms + DAY), Period(start, end + 1),
               Period(JAN.start_ms - HOUR + 1, JAN.start_ms + 2 * DAY - 7)]

    async def check(workdir: Path) -> None:
        billing = await open_billing(workdir / "q.db")
        try:
            for i in range(0, len(events), batch):
                await billing.append(events[i:i + batch], JAN.start_ms + i)
            meters = [m.name for m in METERS]
            for period in periods:
                async with billing.store.billing_snapshot() as snap:
                    read = await snap.quantities(meters, ["x", "y", "z"], period)
                for meter in METERS:
                    for customer in "xyz":
                        agg = await billing.store.meter_aggregate(
                            meter.name, customer, period.start_ms, period.end_ms)
                        expected = None if agg is None else quantity(meter.aggregation, agg)
                        assert read[meter.name].get(customer) == expected
        finally:
            await billing.store.close()

    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(check(Path(workdir)))
