"""billing/statement.py: statement ids, lines and totals, credits across periods,
adjustments, and determinism."""

from __future__ import annotations

import hashlib
import random
from base64 import b32encode
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.credits import CreditGrant, CreditState
from billing.cycles import Cycle, Period
from billing.plans import CreditPolicy, Plan, Price
from billing.pricing import FixedLine, UsageLine, price_line
from billing.statement import (
    AdjustmentLine,
    LateUsage,
    ManualAdjustment,
    ManualLine,
    Statement,
    compute_statement,
    statement_id,
)

D = Decimal
JAN = Period(1_767_225_600_000, 1_769_904_000_000)  # 2026-01 in UTC
FEB = Period(JAN.end_ms, 1_772_323_200_000)

PRO = Plan(  # the reference plan
    name="pro", currency="USD", cycle=Cycle(calendar="monthly"), fixed_price=D("49.00"),
    prices=(
        Price("api_calls", D("0.001"), free_threshold=D(10_000)),
        Price("standard_images", D("0.04")),
        Price("hd_images", D("0.08")),
        Price("output_tokens", D("0.00002"), credits=CreditPolicy(D(50_000))),
        Price("egress_bytes", D(5), D(10), D(1_000_000_000)),
        Price("peak_seats", D(2), D(5)),
        Price("storage_gb", D("0.10")),
    ),
)
USAGE = {
    "api_calls": D(12_500), "hd_images": D(3), "output_tokens": D(80_000),
    "egress_bytes": D(12_500_000_000), "peak_seats": D(23), "storage_gb": D(30),
}


def usage_lines(statement: Statement) -> dict[str, UsageLine]:
    return {line.meter: line for line in statement.lines if isinstance(line, UsageLine)}


# ------------------------------------------------------------------------- ids


def test_statement_id() -> None:
    assert statement_id("c1", JAN.start_ms) == "st_buvqnoy4ctrb7tt43f5b6tkq22"
    digest = hashlib.sha256(b"acme\x001767225600000").digest()
    assert statement_id("acme", JAN.start_ms) == "st_" + b32encode(digest).decode().lower()[:26]
    # the separator keeps ("c1", 23) and ("c12", 3) apart
    assert statement_id("c1", 23) != statement_id("c12", 3)


@settings(deadline=None)
@given(st.text(min_size=1, max_size=20), st.integers(-(10**13), 10**13))
def test_statement_ids_are_st_and_26_base32_characters(customer: str, start: int) -> None:
    found = statement_id(customer, start)
    assert found.startswith("st_") and len(found) == 29
    assert set(found[3:]) <= set("abcdefghijklmnopqrstuvwxyz234567")


# ------------------------------------------------------------------ statements


def test_the_reference_plan_statement() -> None:
    statement = compute_statement("acme", PRO, JAN, active=JAN, quantities=USAGE,
                                  cutoff_ms=JAN.end_ms + 5)
    assert statement.lines[0] == FixedLine(D("49.00"), JAN.duration_ms, JAN.duration_ms,
                                           D("49.00"))
    lines = usage_lines(statement)
    assert list(lines) == [price.meter for price in PRO.prices]  # plan order, zeros included
    assert {meter: str(line.amount) for meter, line in lines.items()} == {
        "api_calls": "2.50",        # 2,500 above 10,000 free x $0.001
        "standard_images": "0.00",
        "hd_images": "0.24",        # 3 x $0.08
        "output_tokens": "0.60",    # 30,000 after 50,000 credits x $0.00002
        "egress_bytes": "12.50",
        "peak_seats": "36.00",
        "storage_gb": "3.00",
    }
    assert lines["output_tokens"].credits_applied == 50_000
    assert (str(statement.subtotal), str(statement.total), statement.total_minor) == (
        "103.84", "103.84", 10384)
    assert statement.id == statement_id("acme", JAN.start_ms)
    assert (statement.plan, statement.currency, statement.period, statement.cutoff_ms) == (
        "pro", "USD", JAN, JAN.end_ms + 5)
    assert statement.status == "draft" and statement.finalized().status == "final"
    assert [(b.grant_id, b.credits) for b in statement.credit_burns] == [
        (f"per_cycle:output_tokens:{JAN.start_ms}", D(50_000))]
    assert statement.rollover == ()


def test_a_period_without_usage_has_zero_lines_and_the_fixed_price() -> None:
    statement = compute_statement("acme", PRO, JAN, active=JAN, quantities={}, cutoff_ms=0)
    assert len(statement.lines) == 1 + len(PRO.prices)
    assert all(line.amount == 0 for line in usage_lines(statement).values())
    assert str(statement.total) == "49.00"


def test_a_plan_without_fixed_price_has_no_fixed_line() -> None:
    plan = Plan("payg", "JPY", Cycle(fixed_ms=30_000), None, (Price("m", D("0.5")),))
    statement = compute_statement("c", plan, Period(0, 30_000), active=Period(0, 30_000),
                                  quantities={"m": D(5)}, cutoff_ms=0)
    assert [type(line) for line in statement.lines] == [UsageLine]
    assert (str(statement.total), statement.total_minor) == ("3", 3)  # 2.5 yen, half up


def test_the_first_period_prorates_the_fixed_price() -> None:
    created = JAN.start_ms + 10 * 86_400_000  # active 21 of 31 days
    statement = compute_statement("acme", PRO, JAN, active=Period(created, JAN.end_ms),
                                  quantities={}, cutoff_ms=0)
    assert str(statement.lines[0].amount) == "33.19"  # 49 x 21/31 = 33.193...


def test_an_active_span_outside_the_period_is_an_error() -> None:
    with pytest.raises(ValueError):
        compute_statement("acme", PRO, JAN, active=FEB, quantities={}, cutoff_ms=0)


# ------------------------------------------------------------------- credits

ROLLING = Plan("rolling", "USD", Cycle(calendar="monthly"), None, (
    Price("m", D(1), credits=CreditPolicy(D(100), D(1), D(50))),))


def test_rollover_carries_half_the_unused_per_cycle_credits_once() -> None:
    january = compute_statement("c", ROLLING, JAN, active=JAN, quantities={"m": D(40)},
                                cutoff_ms=0)
    assert january.rollover == (("m", D(30)),)  # 60 unused x 50%
    february = compute_statement("c", ROLLING, FEB, active=FEB, quantities={"m": D(120)},
                                 cutoff_ms=0, credits=CreditState(carried=dict(january.rollover)))
    line = usage_lines(february)["m"]
    assert (line.credits_applied, line.billable_units, line.credits_remaining) == (
        D(120), D(0), D(10))
    # the carried credits burn first and never roll again: 10 per-cycle unused -> 5
    assert [(b.kind, b.credits) for b in february.credit_burns] == [
        ("rollover", D(30)), ("per_cycle", D(90))]
    assert february.rollover == (("m", D(5)),)


def test_a_grant_carries_its_balance_across_periods() -> None:
    plan = Plan("p", "USD", Cycle(calendar="monthly"), None, (Price("m", D("0.5")),))
    grant = CreditGrant("welcome", "m", D(100), JAN.start_ms, None, JAN.start_ms)
    january = compute_statement("c", plan, JAN, active=JAN, quantities={"m": D(60)},
                                cutoff_ms=0, credits=CreditState(grants=(grant,)))
    burned = {b.grant_id: b.credits for b in january.credit_burns if b.kind == "grant"}
    assert burned == {"welcome": D(60)}
    february = compute_statement("c", plan, FEB, active=FEB, quantities={"m": D(60)},
                                 cutoff_ms=0, credits=CreditState((grant,), burned))
    line = usage_lines(february)["m"]
    assert (line.credits_applied, line.credits_remaining, line.billable_units) == (
        D(40), D(0), D(20))
    assert str(february.total) == "10.00"


# ---------------------------------------------------------------- adjustments

SEATS = Price("peak_seats", D(2), D(5))


def late_seats(period: Period, quantity: str, billed_quantity: str = "10") -> LateUsage:
    final, _ = price_line(SEATS, D(billed_quantity), "USD")
    return LateUsage(period, "USD", SEATS, final, D(quantity), final.amount)


def test_late_usage_becomes_an_adjustment_naming_its_period_and_meter() -> None:
    december = Period(JAN.start_ms - 31 * 86_400_000, JAN.start_ms)
    statement = compute_statement("acme", PRO, JAN, active=JAN, quantities={}, cutoff_ms=0,
                                  late=[late_seats(december, "14")])
    adjustment = statement.lines[-1]
    # December billed 10 seats (5 x $2); 14 seats re-rate to 9 x $2: $8 more
    assert adjustment == AdjustmentLine("peak_seats", december, D(14), D("8.00"))
    assert (str(statement.subtotal), str(statement.total)) == ("49.00", "57.00")


def test_late_usage_in_another_currency_is_refused() -> None:
    late = late_seats(Period(0, 10), "14")
    euro = LateUsage(late.period, "EUR", late.price, late.finalized, late.quantity,
                     late.already_billed)
    with pytest.raises(ValueError, match="EUR"):
        compute_statement("acme", PRO, JAN, active=JAN, quantities={}, cutoff_ms=0, late=[euro])


def test_an_adjustment_only_statement_may_be_negative() -> None:
    credit = ManualAdjustment("refund-1", D("-20.004"), "Goodwill credit", 5)
    statement = compute_statement("gone", PRO, FEB, active=None, quantities=USAGE, cutoff_ms=0,
                                  late=[late_seats(JAN, "8")], manual=[credit])
    assert statement.lines == (
        AdjustmentLine("peak_seats", JAN, D(8), D("-4.00")),
        ManualLine("refund-1", "Goodwill credit", D("-20.00")),
    )
    assert (str(statement.subtotal), str(statement.total), statement.total_minor) == (
        "0.00", "-24.00", -2400)
    assert statement.credit_burns == ()


def test_manual_lines_follow_their_creation() -> None:
    manual = [ManualAdjustment("b", D(1), "second", 20), ManualAdjustment("c", D(1), "third", 20),
              ManualAdjustment("a", D(1), "first", 10)]
    statement = compute_statement("c", PRO, JAN, active=None, quantities={}, cutoff_ms=0,
                                  manual=manual)
    assert [line.description for line in statement.lines if isinstance(line, ManualLine)] == [
        "first", "second", "third"]


# ---------------------------------------------------------------- determinism

grants = st.lists(
    st.builds(lambda i, credits, expires: CreditGrant(f"g{i}", "m", credits, 0, expires, i % 3),
              st.integers(0, 50), st.decimals(min_value=1, max_value=50, places=1),
              st.one_of(st.none(), st.integers(JAN.start_ms + 1, FEB.end_ms))),
    max_size=5, unique_by=lambda g: g.grant_id)
manual_adjustments = st.lists(
    st.builds(lambda i, amount: ManualAdjustment(f"a{i}", amount, f"line {i}", i % 2),
              st.integers(0, 50), st.decimals(min_value=-100, max_value=100, places=3)),
    max_size=4, unique_by=lambda m: m.adjustment_id)


@settings(deadline=None)
@given(st.decimals(min_value=0, max_value=10_000, places=2), grants, manual_adjustments,
       st.randoms(use_true_random=False))
def test_a_statement_computed_twice_or_from_shuffled_inputs_is_identical(
    used: Decimal, extra: list[CreditGrant], manual: list[ManualAdjustment], rnd: random.Random
) -> None:
    def compute(grant_list: list[CreditGrant], manual_list: list[ManualAdjustment]) -> Statement:
        return compute_statement("c", ROLLING, JAN, active=JAN, quantities={"m": used},
                                 cutoff_ms=7, credits=CreditState(tuple(grant_list)),
                                 late=[late_seats(FEB, "12"), late_seats(JAN, "3")],
                                 manual=manual_list)

    first = compute(extra, manual)
    assert compute(extra, manual) == first
    shuffled_grants, shuffled_manual = extra[:], manual[:]
    rnd.shuffle(shuffled_grants)
    rnd.shuffle(shuffled_manual)
    again = compute(shuffled_grants, shuffled_manual)
    assert again == first and repr(again) == repr(first)
    assert first.total_minor == int(first.total * 100)
