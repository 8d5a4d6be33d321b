"""billing/engine.py through the real SQLite store: hand-computed statements for the worked
examples, credits across periods, plan changes, DELETE, late usage and manual adjustments."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing.credits import CreditGrant
from billing.cycles import Period
from billing.engine import CustomerDeleted, PlanView
from billing.events import UsageEvent
from billing.pricing import FixedLine
from billing.record_codec import decode
from billing.statement import AdjustmentLine, ManualAdjustment
from tests.billing.test_engine_kit import (
    DAY,
    FEB,
    GRACE,
    HOUR,
    JAN,
    MAR,
    Billing,
    adjustments,
    event,
    manual,
    open_billing,
    usage,
)

D = Decimal
Make = Callable[..., Awaitable[Billing]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    """Opens billing on a fresh file per call; every store is closed at teardown."""
    opened: list[Billing] = []

    async def make(**options: Any) -> Billing:
        opened.append(await open_billing(tmp_path / f"b{len(opened)}.db", **options))
        return opened[-1]

    yield make
    for billing in opened:
        await billing.store.close()

@pytest.fixture
async def billing(make: Make) -> Billing:
    return await make()


async def finish(billing: Billing, period: Period) -> None:
    """Draft at the period's end, then finalise it after the grace period."""
    assert await billing.close(period.end_ms) == (1, 0)
    assert await billing.close(period.end_ms + GRACE) == (0, 1)


# ------------------------------------------------------------- worked examples

def spread(customer: str, name: str, key: str, values: list[int]) -> list[UsageEvent]:
    """One event per value, a day apart from Jan 2nd, ingested in reverse order."""
    events = [event(customer, name, JAN.start_ms + (i + 1) * DAY, **{key: v})
              for i, v in enumerate(values)]
    return events[::-1]


@pytest.mark.parametrize(("meter", "events", "quantity", "amount"), [
    # 12.5 GB with 10 GB free at $5 per GB
    ("egress_bytes", spread("c", "bandwidth", "bytes", [2_500_000_000] * 5), "12500000000",
     "12.50"),
    # the highest of 15, 23, 18 seats, 5 free, at $2
    ("peak_seats", spread("c", "seats.reported", "seats", [15, 23, 18]), "23", "36.00"),
    # the latest of 40, 55, 30 GB (by timestamp, whatever the ingestion order) at $0.10
    ("storage_gb", spread("c", "storage.snapshot", "gb", [40, 55, 30]), "30", "3.00"),
    # 2,500 calls, 1,000 free, at $0.02
    ("api_calls", [event("c", "api.call", JAN.start_ms + i * 1000) for i in range(2500)],
     "2500", "30.00"),
])
async def test_the_worked_examples(billing: Billing, meter: str, events: list[UsageEvent],
                                   quantity: str, amount: str) -> None:
    await billing.append(events, JAN.start_ms + 5 * DAY)
    await finish(billing, JAN)
    statement = await billing.statement("c", JAN)
    assert statement.status == "final"
    line = usage(statement, meter)
    assert (str(line.quantity), str(line.amount)) == (quantity, amount)
    assert str(statement.total) == amount  # every other line is zero (no fixed price)


async def test_a_statement_records_its_cutoff_and_later_runs_change_nothing(
    billing: Billing
) -> None:
    await billing.append([event("c", "api.call", JAN.start_ms + 5)], JAN.start_ms + 10)
    await finish(billing, JAN)
    stored = await billing.store.get_statement((await billing.statement("c", JAN)).id)
    assert stored is not None and stored.head.cutoff_ms == JAN.start_ms + 10
    assert stored.finalized_at_ms == JAN.end_ms + GRACE
    await billing.append([event("c", "api.call", FEB.start_ms + 5)], FEB.start_ms + 2 * HOUR)
    assert await billing.close(FEB.start_ms + 3 * HOUR) == (0, 0)
    again = await billing.store.get_statement(stored.head.statement_id)
    assert again == stored


# -------------------------------------------------------------------- credits

async def test_unused_per_cycle_credits_roll_over_once(make: Make) -> None:
    billing = await make(default_plan="pro")
    await billing.append([event("c", "llm.tokens", JAN.start_ms + DAY, n=40_000)])
    await billing.append([event("c", "llm.tokens", FEB.start_ms + DAY, n=60_000)],
                         FEB.start_ms + DAY)
    await finish(billing, JAN)
    await finish(billing, FEB)
    january, february = await billing.statement("c", JAN), await billing.statement("c", FEB)
    assert january.rollover == (("tokens", D(5000)),)  # 50% of 10,000 unused
    line = usage(february, "tokens")
    # 5,000 carried + 50,000 renewed cover 55,000 of 60,000; 5,000 x $0.00002
    assert (line.credits_applied, line.credits_remaining, line.billable_units) == (
        D(55_000), D(0), D(5000))
    assert (str(line.amount), str(february.total)) == ("0.10", "49.10")
    assert february.rollover == ()  # the carried credits never roll again


async def test_a_grant_covers_the_periods_before_its_expiry(billing: Billing) -> None:
    customer = "granted"
    await billing.engine.change_plan(customer, "basic")
    expires = FEB.start_ms + 14 * DAY
    grant = CreditGrant("welcome", "api_calls", D(1000), JAN.start_ms, expires, JAN.start_ms)
    assert await billing.store.add_grant(customer, grant) == (grant, True)
    for period, calls in ((JAN, 200), (FEB, 300), (MAR, 100)):
        await billing.append([event(customer, "api.call", period.start_ms + i * 1000)
                              for i in range(calls)], period.start_ms + HOUR)
        await finish(billing, period)
    lines = [usage(await billing.statement(customer, p), "api_calls") for p in (JAN, FEB, MAR)]
    assert [(line.credits_applied, line.amount) for line in lines] == [
        (D(200), D("0.00")), (D(300), D("0.00")), (D(0), D("1.00"))]  # expired mid-February
    assert lines[0].credits_remaining == 800
    [balance] = await billing.store.grant_balances(customer)
    assert (balance.grant, balance.burned) == (grant, D(500))


# --------------------------------------------------------------- plan changes

async def test_a_plan_change_applies_from_the_next_period(billing: Billing) -> None:
    billing.clock.now = JAN.start_ms + DAY
    await billing.engine.change_plan("c", "basic")  # a new customer: at once
    billing.clock.now = JAN.start_ms + 10 * DAY
    customer = await billing.engine.change_plan("c", "pro")
    assert customer.plan == "pro"
    views = await billing.engine.plan_views([customer])
    assert views == {"c": PlanView("basic", "pro", FEB.start_ms)}
    await billing.append([event("c", "api.call", JAN.start_ms + 11 * DAY),
                          event("c", "api.call", FEB.start_ms + DAY)], FEB.start_ms + DAY)
    await finish(billing, JAN)
    await finish(billing, FEB)
    january, february = await billing.statement("c", JAN), await billing.statement("c", FEB)
    assert (january.plan, str(january.total)) == ("basic", "9.69")  # 10 x 30/31 + 0.01
    assert (february.plan, str(february.total)) == ("pro", "49.00")
    assert await billing.engine.plan_views([customer], FEB.start_ms) == {
        "c": PlanView("pro", None, None)}


async def test_changing_back_before_the_boundary_cancels_the_change(billing: Billing) -> None:
    await billing.engine.change_plan("c", "basic")
    billing.clock.now = JAN.start_ms + DAY
    await billing.engine.change_plan("c", "pro")
    customer = await billing.engine.change_plan("c", "basic")
    assert await billing.engine.plan_views([customer]) == {"c": PlanView("basic", None, None)}


async def test_a_new_cycle_starts_at_the_end_of_the_current_period(billing: Billing) -> None:
    await billing.engine.change_plan("c", "basic")
    billing.clock.now = JAN.start_ms + DAY
    await billing.engine.change_plan("c", "weekly")
    await finish(billing, JAN)
    # 2026-02-01 is a Sunday: the weekly plan's first period is that one day, prorated
    sunday = Period(FEB.start_ms, FEB.start_ms + DAY)
    await finish(billing, sunday)
    week = Period(sunday.end_ms, sunday.end_ms + 7 * DAY)
    await finish(billing, week)
    first = await billing.statement("c", sunday)
    assert (first.plan, first.period, str(first.total)) == ("weekly", sunday, "1.00")
    assert (await billing.statement("c", week)).period == week


async def test_a_deleted_customer_cannot_change_plan(billing: Billing) -> None:
    await billing.engine.change_plan("c", "basic")
    await billing.store.delete_customer("c", JAN.start_ms + DAY)
    with pytest.raises(CustomerDeleted):
        await billing.engine.change_plan("c", "pro")


# ---------------------------------------------------------------------- DELETE

async def test_delete_ends_the_period_and_prorates_the_fixed_price(billing: Billing) -> None:
    await billing.engine.change_plan("c", "basic")
    deleted = JAN.start_ms + 10 * DAY
    await billing.append([event("c", "api.call", deleted - 1)], deleted - 1)
    await billing.store.delete_customer("c", deleted)
    await billing.append([event("c", "api.call", deleted + 1)], deleted + 1)  # stored, not billed
    assert await billing.close(deleted + 1) == (1, 0)
    assert await billing.close(deleted + GRACE) == (0, 1)
    statement = await billing.statement("c", JAN)
    assert statement.period == Period(JAN.start_ms, deleted)
    fixed = statement.lines[0]
    assert isinstance(fixed, FixedLine)
    assert (fixed.active_ms, fixed.period_ms) == (10 * DAY, 31 * DAY)
    assert str(fixed.amount) == "3.23"  # $10 x 10/31
    assert usage(statement, "api_calls").quantity == 1
    assert await billing.close(MAR.end_ms) == (0, 0)  # no period after a DELETE


async def test_late_usage_of_a_deleted_customer_gets_an_adjustment_only_statement(
    billing: Billing
) -> None:
    await billing.engine.change_plan("c", "basic")
    deleted = JAN.start_ms + 10 * DAY
    await billing.append([event("c", "api.call", deleted - 2)], deleted - 1)
    await billing.store.delete_customer("c", deleted)
    await billing.close(deleted + GRACE)
    await billing.append([event("c", "api.call", deleted - 3)], deleted + 2 * GRACE)
    await billing.store.add_adjustment("c", ManualAdjustment("goodwill", D(-5), "Sorry", 7))
    assert await billing.close(deleted + 3 * GRACE) == (0, 1)
    page = await billing.store.list_statements(customer_id="c", status="final",
                                               finalized_after_ms=None, limit=10)
    assert [s.head.period for s in page] == [
        Period(JAN.start_ms, deleted), Period(deleted, deleted + 3 * GRACE)]
    extra = decode(page[1].record).statement
    assert adjustments(extra) == [AdjustmentLine("api_calls", page[0].head.period, D(2),
                                                 D("0.01"))]
    assert [line.amount for line in manual(extra)] == [D("-5.00")]
    assert (str(extra.subtotal), str(extra.total)) == ("0.00", "-4.99")


# ------------------------------------------------------------------ late usage

async def test_late_usage_becomes_an_adjustment_on_the_next_statement(billing: Billing) -> None:
    await billing.append([event("c", "seats.reported", JAN.start_ms + DAY, seats=10)],
                         JAN.start_ms + DAY)
    await finish(billing, JAN)
    january = await billing.statement("c", JAN)
    # usage of January ingested after it became final (a backdated ingest)
    await billing.append([event("c", "seats.reported", JAN.start_ms + 2 * DAY, seats=14)],
                         FEB.start_ms + 2 * HOUR)
    preview = await billing.engine.preview("c", FEB.start_ms + DAY)
    assert preview is not None and adjustments(preview.statement.statement) == [
        AdjustmentLine("peak_seats", JAN, D(14), D("8.00"))]  # (14 - 5) x 2 - (10 - 5) x 2
    await finish(billing, FEB)
    assert await billing.statement("c", JAN) == january  # a final statement never changes
    february = await billing.statement("c", FEB)
    assert adjustments(february) == [AdjustmentLine("peak_seats", JAN, D(14), D("8.00"))]
    assert (str(february.subtotal), str(february.total)) == ("0.00", "8.00")
    # a lower late reading changes nothing; a higher one is billed net of both earlier lines
    await billing.append([event("c", "seats.reported", JAN.start_ms + 3 * DAY, seats=12)],
                         MAR.start_ms - DAY)
    await billing.append([event("c", "seats.reported", JAN.start_ms + 4 * DAY, seats=20)],
                         MAR.start_ms - DAY)
    await finish(billing, MAR)
    assert adjustments(await billing.statement("c", MAR)) == [
        AdjustmentLine("peak_seats", JAN, D(20), D("12.00"))]  # 30 - (10 + 8)


async def test_late_usage_ingested_soon_after_its_timestamp_is_found_too(make: Make) -> None:
    # A grace period shorter than the late-usage index's lag: the event waited only two
    # minutes, and the store was idle, so it is found by its timestamp.
    billing = await make(grace_ms=60_000)
    await billing.append([event("c", "api.call", JAN.end_ms - 20 * 60_000)],
                         JAN.end_ms - 10 * 60_000)
    await billing.close(JAN.end_ms)
    await billing.close(JAN.end_ms + 60_000)
    await billing.append([event("c", "api.call", JAN.end_ms - 1)], JAN.end_ms + 2 * 60_000)
    await billing.close(FEB.end_ms)
    await billing.close(FEB.end_ms + 60_000)
    february = await billing.statement("c", FEB)
    assert adjustments(february) == [AdjustmentLine("api_calls", JAN, D(2), D("0.00"))]


# -------------------------------------------------------------- manual lines

async def test_a_manual_adjustment_lands_on_the_next_final_statement_once(
    billing: Billing
) -> None:
    await billing.engine.change_plan("c", "basic")
    await billing.store.add_adjustment("c", ManualAdjustment("a1", D("2.50"), "Setup", 5))
    await billing.close(JAN.end_ms)
    draft = await billing.statement("c", JAN)
    assert [line.amount for line in manual(draft)] == [D("2.50")]  # shown on the draft
    await billing.close(JAN.end_ms + GRACE)
    await billing.store.add_adjustment("c", ManualAdjustment("a2", D(-1), "Refund", 6))
    await finish(billing, FEB)
    january, february = await billing.statement("c", JAN), await billing.statement("c", FEB)
    assert [m.adjustment_id for m in manual(january)] == ["a1"]
    assert [m.adjustment_id for m in manual(february)] == ["a2"]
    entries = await billing.store.list_adjustments("c")
    assert [(e.adjustment.adjustment_id, e.statement_id) for e in entries] == [
        ("a1", january.id), ("a2", february.id)]


# ----------------------------------------------------------------- previews

async def test_the_preview_is_the_statement_the_run_writes(billing: Billing) -> None:
    await billing.engine.change_plan("c", "basic")
    await billing.append([event("c", "api.call", JAN.start_ms + i) for i in range(7)])
    preview = await billing.engine.preview("c", JAN.start_ms + DAY, JAN.start_ms + DAY)
    assert preview is not None and not preview.stored and not preview.ended
    await billing.close(JAN.end_ms)
    assert preview.statement.statement == await billing.statement("c", JAN)
    ended = await billing.engine.preview("c", JAN.start_ms, JAN.end_ms + 1)
    assert ended is not None and ended.ended and not ended.stored
    await billing.close(JAN.end_ms + GRACE)
    final = await billing.engine.preview("c", JAN.start_ms + 5)
    assert final is not None and final.stored
    assert final.statement.statement == await billing.statement("c", JAN)


async def test_no_preview_without_a_customer_or_a_period(make: Make) -> None:
    billing = await make(default_plan=None)
    assert await billing.engine.preview("nobody", JAN.start_ms) is None
    await billing.store.ensure_customer("planless", JAN.start_ms)
    assert await billing.engine.preview("planless", JAN.start_ms) is None
    assert await billing.close(FEB.end_ms) == (0, 0)  # no plan, no statements


async def test_open_usage_and_statement_counts(billing: Billing) -> None:
    await billing.append([event("a", "api.call", JAN.start_ms + 1),
                          event("b", "bandwidth", JAN.start_ms + 2, bytes=7),
                          event("b", "api.call", JAN.end_ms + 3)], JAN.end_ms + 4)
    assert await billing.engine.statement_counts() == {"draft": 0, "final": 0}
    january = await billing.engine.open_usage(JAN.start_ms + DAY)
    assert january["api_calls"] == {"a": 1} and january["egress_bytes"] == {"b": 7}
    assert january["tokens"] == {}
    await billing.close(FEB.start_ms)
    assert await billing.engine.statement_counts() == {"draft": 2, "final": 0}
    february = await billing.engine.open_usage(FEB.start_ms + DAY)
    assert february["api_calls"] == {"b": 1} and february["egress_bytes"] == {}


async def test_open_usage_follows_new_customers_deletes_and_period_ends(
    billing: Billing
) -> None:
    await billing.append([event("a", "api.call", JAN.start_ms + 1)], JAN.start_ms + 2)
    assert (await billing.engine.open_usage(JAN.start_ms + DAY))["api_calls"] == {"a": 1}
    await billing.append([event("b", "api.call", JAN.start_ms + 3),
                          event("a", "api.call", JAN.start_ms + 4)], JAN.start_ms + 5)
    assert (await billing.engine.open_usage(JAN.start_ms + DAY))["api_calls"] == {
        "a": 2, "b": 1}  # a new customer, and new usage of a known one
    await billing.store.delete_customer("a", JAN.start_ms + 2 * DAY)
    later = await billing.engine.open_usage(JAN.start_ms + 2 * DAY)
    assert later["api_calls"] == {"b": 1}  # a's period ended with its deletion
    await billing.append([event("b", "api.call", FEB.start_ms + 1)], FEB.start_ms + 2)
    assert (await billing.engine.open_usage(FEB.start_ms + DAY))["api_calls"] == {"b": 1}
    await billing.engine.change_plan("c", "basic")  # a new customer on a plan, at once
    assert "c" not in (await billing.engine.open_usage(FEB.start_ms + DAY))["api_calls"]
    await billing.append([event("c", "api.call", FEB.start_ms + 7)], FEB.start_ms + 8)
    assert (await billing.engine.open_usage(FEB.start_ms + DAY))["api_calls"] == {
        "b": 1, "c": 1}
