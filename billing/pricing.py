"""Pricing: one price line from one meter's quantity, and the fixed-price line.

Per line (the contract's order): quantity -> divided by unit_size (exact) -> minus
the free threshold -> minus credits -> billable units x price_per_unit -> rounded
once, half away from zero, to the currency's minor unit (`money.round_money`).
Usage below zero bills nothing (no free units, no credits, no negative amount):
refunds are manual adjustments, not meter readings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from billing.credits import Balance, CreditBurn, burn
from billing.cycles import Period
from billing.money import EXACT, divide, round_money
from billing.plans import Price

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class UsageLine:
    """The line of one price: `quantity` in meter units; the rest in billed units
    (after `unit_size`), except `credits_*` which count credits: `credits_applied` used
    by this line, `credits_remaining` still usable for the meter after it (per-cycle and
    rollover credits among them expire with the period)."""

    meter: str
    quantity: Decimal
    unit_size: Decimal
    free_units: Decimal
    credits_applied: Decimal
    credits_remaining: Decimal
    billable_units: Decimal
    unit_price: Decimal
    amount: Decimal


@dataclass(frozen=True, slots=True)
class FixedLine:
    """The plan's fixed price for a period, prorated by the time the customer was
    active in it (`active_ms` of `period_ms`)."""

    fixed_price: Decimal
    active_ms: int
    period_ms: int
    amount: Decimal

    @property
    def prorated(self) -> bool:
        return self.active_ms < self.period_ms


@dataclass(frozen=True, slots=True)
class _Split:
    units: Decimal
    free: Decimal
    above: Decimal  # billed units above the free threshold, never negative


def _split(price: Price, quantity: Decimal) -> _Split:
    units = divide(quantity, price.unit_size)
    free = min(max(units, _ZERO), price.free_threshold)
    return _Split(units, free, max(EXACT.subtract(units, free), _ZERO))


def _amount(price: Price, billable: Decimal, currency: str) -> Decimal:
    return round_money(EXACT.multiply(billable, price.price_per_unit), currency)


def price_line(price: Price, quantity: Decimal, currency: str,
               credits: Sequence[Balance] = ()) -> tuple[UsageLine, tuple[CreditBurn, ...]]:
    """The line billing `quantity` of `price.meter`, and the credit burns it implies.

    `credits`: the balances usable for this meter in this period, in burn order
    (`credits.available_for`). Raises UnknownCurrency.
    """
    split = _split(price, quantity)
    burned = burn(split.above, credits, price.credits.units_per_credit)
    billable = EXACT.subtract(split.above, burned.units_covered)
    line = UsageLine(
        meter=price.meter,
        quantity=quantity,
        unit_size=price.unit_size,
        free_units=split.free,
        credits_applied=burned.credits_applied,
        credits_remaining=burned.credits_remaining,
        billable_units=billable,
        unit_price=price.price_per_unit,
        amount=_amount(price, billable, currency),
    )
    return line, burned.burns


def fixed_line(fixed_price: Decimal, currency: str, period: Period, active: Period) -> FixedLine:
    """The fixed-price line: round_money(fixed_price x active / period).

    `active` is the part of `period` in which the customer existed (from its creation,
    until a DELETE ended its period early). Raises ValueError if it lies outside.
    """
    if active.intersection(period) != active:
        raise ValueError(f"active span {active} is not within {period}")
    share = divide(EXACT.multiply(fixed_price, Decimal(active.duration_ms)),
                   Decimal(period.duration_ms))
    return FixedLine(fixed_price, active.duration_ms, period.duration_ms,
                     round_money(share, currency))


def rerate_line(price: Price, finalized: UsageLine, new_quantity: Decimal, currency: str,
                already_billed: Decimal) -> Decimal:
    """What late usage adds to a final period: its line re-rated with `new_quantity`,
    minus `already_billed` (the final line's amount plus earlier adjustments of it).

    Re-rating keeps the period's price (free threshold included) and the credits the
    final statement applied: no new credits are drawn. May be negative (a `last`
    reading can fall). Raises UnknownCurrency.
    """
    split = _split(price, new_quantity)
    covered = EXACT.multiply(finalized.credits_applied, price.credits.units_per_credit)
    billable = EXACT.subtract(split.above, min(split.above, covered))
    return EXACT.subtract(_amount(price, billable, currency), already_billed)
