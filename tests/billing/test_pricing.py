"""billing/pricing.py: the issue's worked examples, rounding, credits, proration, re-rating."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.credits import Balance, CreditGrant
from billing.cycles import Period
from billing.events import Metadata
from billing.meters import Aggregate, Meter, fold, quantity
from billing.plans import CreditPolicy, Price
from billing.pricing import FixedLine, UsageLine, fixed_line, price_line, rerate_line

D = Decimal


def meter_quantity(meter: Meter, events: list[Metadata]) -> Decimal:
    """What the store would compute: read every event, fold in timestamp order."""
    agg: Aggregate | None = None
    for seq, metadata in enumerate(events):
        value = meter.read(metadata)
        if isinstance(value, Decimal):
            agg = fold(meter.aggregation, agg, value, 1_000 + seq, seq)
    return quantity(meter.aggregation, agg)


# The worked examples, computed by hand:
#   egress: 12_500_000_000 bytes / 1e9 = 12.5 GB, 10 free -> 2.5 x $5 = $12.50
#   seats: max(15, 23, 18) = 23, 5 free -> 18 x $2 = $36.00
#   storage: last of 40, 55, 30 = 30 -> 30 x $0.10 = $3.00
#   calls: 2,500, 1,000 free -> 1,500 x $0.02 = $30.00
@pytest.mark.parametrize(
    ("meter", "events", "price", "quantity_", "free", "billable", "amount"),
    [
        (Meter("egress_bytes", "bandwidth", "sum", "bytes"),
         [{"bytes": 5_000_000_000}, {"bytes": "7500000000"}, {"path": "/x"}],
         Price("egress_bytes", D("5"), free_threshold=D(10), unit_size=D(1_000_000_000)),
         "12500000000", "10", "2.5", "12.50"),
        (Meter("peak_seats", "seats.reported", "max", "seats"),
         [{"seats": 15}, {"seats": 23}, {"seats": 18}],
         Price("peak_seats", D("2"), free_threshold=D(5)),
         "23", "5", "18", "36.00"),
        (Meter("storage_gb", "storage.snapshot", "last", "gb"),
         [{"gb": 40}, {"gb": 55}, {"gb": 30}],
         Price("storage_gb", D("0.10")),
         "30", "0", "30", "3.00"),
        (Meter("api_calls", "api.call", "count"),
         [{"status": 200}] * 2_500,
         Price("api_calls", D("0.02"), free_threshold=D(1_000)),
         "2500", "1000", "1500", "30.00"),
    ],
)
def test_worked_examples(meter: Meter, events: list[Metadata], price: Price, quantity_: str,
                         free: str, billable: str, amount: str) -> None:
    measured = meter_quantity(meter, events)
    assert measured == D(quantity_)
    line, burns = price_line(price, measured, "USD")
    assert (line.free_units, line.billable_units) == (D(free), D(billable))
    assert str(line.amount) == amount
    assert burns == ()


@pytest.mark.parametrize(
    ("units", "unit_price", "currency", "amount"),
    [
        ("3", "0.005", "USD", "0.02"),    # 0.015 -> half up
        ("1", "0.0049", "USD", "0.00"),
        ("5", "0.5", "JPY", "3"),         # 2.5 yen -> 3
        ("1", "1.0005", "KWD", "1.001"),
        ("10001", "0.00002", "USD", "0.20"),  # 0.20002
    ],
)
def test_one_rounding_per_line(units: str, unit_price: str, currency: str, amount: str) -> None:
    line, _ = price_line(Price("m", D(unit_price)), D(units), currency)
    assert str(line.amount) == amount
    assert line.billable_units == D(units)  # units are never rounded


def test_usage_below_the_free_threshold_is_free() -> None:
    line, _ = price_line(Price("m", D(1), free_threshold=D(10)), D(4), "USD")
    assert (line.free_units, line.billable_units, line.amount) == (D(4), D(0), D("0.00"))


def test_negative_usage_bills_nothing() -> None:
    balance = Balance(CreditGrant("g", "m", D(5), 0, None, 0), D(5))
    line, burns = price_line(Price("m", D(1), free_threshold=D(10)), D(-7), "USD", [balance])
    assert (line.free_units, line.billable_units, line.amount) == (D(0), D(0), D("0.00"))
    assert burns == () and line.credits_remaining == 5


def grant_balance(credits: str, grant_id: str = "g") -> Balance:
    return Balance(CreditGrant(grant_id, "tokens", D(credits), 0, None, 0), D(credits))


def test_credits_cover_units_above_the_free_threshold_before_anything_is_charged() -> None:
    price = Price("tokens", D("0.00002"), free_threshold=D(1_000),
                  credits=CreditPolicy(D(50_000)))
    line, burns = price_line(price, D(81_000), "USD", [grant_balance("50000")])
    # 81,000 - 1,000 free = 80,000; 50,000 covered by credits; 30,000 x $0.00002 = $0.60
    assert line == UsageLine("tokens", D(81_000), D(1), D(1_000), D(50_000), D(0), D(30_000),
                             D("0.00002"), D("0.60"))
    assert [(b.grant_id, b.credits) for b in burns] == [("g", D(50_000))]


def test_a_credit_covers_units_per_credit_billed_units() -> None:
    price = Price("tokens", D("0.01"), credits=CreditPolicy(units_per_credit=D(1_000)))
    line, _ = price_line(price, D(2_500), "USD", [grant_balance("2"), grant_balance("7", "h")])
    assert (line.credits_applied, line.credits_remaining, line.billable_units) == (
        D("2.5"), D("6.5"), D(0))


def test_unused_credits_remain() -> None:
    line, burns = price_line(Price("tokens", D(1)), D(3), "USD", [grant_balance("10")])
    assert (line.credits_applied, line.credits_remaining, line.amount) == (D(3), D(7), D("0.00"))
    assert [(b.grant_id, b.kind, b.credits) for b in burns] == [("g", "grant", D(3))]


# ------------------------------------------------------------------ fixed price

MONTH = Period(0, 30 * 86_400_000)


@pytest.mark.parametrize(
    ("fixed", "active", "amount"),
    [
        ("49.00", MONTH, "49.00"),
        ("49.00", Period(15 * 86_400_000, MONTH.end_ms), "24.50"),
        ("10.00", Period(0, 10 * 86_400_000), "3.33"),       # a third, rounded
        ("10.00", Period(0, 20 * 86_400_000), "6.67"),
        ("0.03", Period(0, 15 * 86_400_000), "0.02"),        # 0.015 -> half up
    ],
)
def test_fixed_price_is_prorated_by_active_time(fixed: str, active: Period, amount: str) -> None:
    line = fixed_line(D(fixed), "USD", MONTH, active)
    assert str(line.amount) == amount
    assert line.prorated is (active != MONTH)


def test_fixed_price_in_yen() -> None:
    assert fixed_line(D(4900), "JPY", MONTH, Period(0, 86_400_000)) == FixedLine(
        D(4900), 86_400_000, MONTH.duration_ms, D(163))  # 163.33 yen


def test_an_active_span_outside_the_period_is_an_error() -> None:
    with pytest.raises(ValueError, match="not within"):
        fixed_line(D(1), "USD", MONTH, Period(-5, 10))


# ------------------------------------------------------------------- re-rating

SEATS = Price("seats", D("2"), free_threshold=D(10), credits=CreditPolicy(D(5)))


def finalized(quantity_: str, credits: str = "0") -> UsageLine:
    balances = [Balance(CreditGrant("c", "seats", D(credits), 0, None, 0), D(credits))]
    line, _ = price_line(SEATS, D(quantity_), "USD", balances if D(credits) else [])
    return line


@pytest.mark.parametrize(
    ("final_quantity", "credits", "new_quantity", "already", "adjustment"),
    [
        # 4 billed nothing; with 3 late units, 7 are still under the free threshold
        ("4", "0", "7", "0.00", "0.00"),
        # 12 billed 2 x $2; late usage brings 15: 5 x $2 = $10, $4 already billed
        ("12", "0", "15", "4.00", "6.00"),
        # 13 with 3 credits applied billed nothing; 20 keeps the 3 credits: 7 x $2
        ("13", "3", "20", "0.00", "14.00"),
        # a `last` reading that fell: 20 billed $20, now 12: $4
        ("20", "0", "12", "20.00", "-16.00"),
        # earlier adjustments count as billed too
        ("12", "0", "15", "10.00", "0.00"),
    ],
)
def test_rerate_line(final_quantity: str, credits: str, new_quantity: str, already: str,
                     adjustment: str) -> None:
    line = finalized(final_quantity, credits)
    assert line.credits_applied == D(credits)
    assert str(rerate_line(SEATS, line, D(new_quantity), "USD", D(already))) == adjustment


def test_rerating_draws_no_new_credits() -> None:
    line = finalized("12", "5")  # 2 units above the threshold, 2 credits used
    assert line.credits_applied == 2
    assert rerate_line(SEATS, line, D(30), "USD", line.amount) == D("36.00")  # 18 x $2
