"""The statement of one customer and period, as a pure function of its inputs.

`compute_statement` is the one code path for drafts, final statements and the usage
preview of the open period. Same inputs, in any order, give an identical Statement:
lines follow the plan's price order, adjustments are sorted, credits burn in their
total order.

Lines: the fixed-price line (when the plan has one), one usage line per price of the
plan (also when zero), late-usage adjustment lines (each naming its period and meter),
then manual lines. `subtotal` is the period's own lines; `total` adds adjustments and
manual lines and may be negative.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from billing.credits import CreditBurn, CreditState, available_for, cycle_grants, rollover_out
from billing.cycles import Period
from billing.money import EXACT, round_money, to_minor
from billing.plans import Plan, Price
from billing.pricing import FixedLine, UsageLine, fixed_line, price_line, rerate_line

StatementStatus = Literal["draft", "final"]
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class LateUsage:
    """Usage of a final period that arrived after it became final.

    `price` and `finalized` are the period's price and usage line as finalised;
    `quantity` the period's quantity with the late events; `already_billed` the final
    line's amount plus the adjustments of that period and meter billed since.
    """

    period: Period
    currency: str
    price: Price
    finalized: UsageLine
    quantity: Decimal
    already_billed: Decimal


@dataclass(frozen=True, slots=True)
class ManualAdjustment:
    """A manual line posted through the API (either sign)."""

    adjustment_id: str
    amount: Decimal
    description: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class AdjustmentLine:
    """Late usage of `meter` in the earlier `period`: `amount` re-rates it."""

    meter: str
    period: Period
    quantity: Decimal
    amount: Decimal


@dataclass(frozen=True, slots=True)
class ManualLine:
    adjustment_id: str
    description: str
    amount: Decimal


Line = FixedLine | UsageLine | AdjustmentLine | ManualLine


@dataclass(frozen=True, slots=True)
class Statement:
    """A computed statement. `cutoff_ms` is the ingested_at watermark of the events it
    counts; `credit_burns` the credits it uses (persist those of kind "grant");
    `rollover` meter -> credits carried into the next period."""

    id: str
    customer_id: str
    plan: str
    currency: str
    period: Period
    cutoff_ms: int
    lines: tuple[Line, ...]
    subtotal: Decimal
    total: Decimal
    total_minor: int
    credit_burns: tuple[CreditBurn, ...]
    rollover: tuple[tuple[str, Decimal], ...]
    status: StatementStatus = "draft"

    def finalized(self) -> Statement:
        """The same statement with status final."""
        return dataclasses.replace(self, status="final")


def statement_id(customer_id: str, period_start_ms: int) -> str:
    """ "st_" + the first 26 lower-case base32 characters of
    sha256(customer_id + NUL + decimal period start)."""
    digest = hashlib.sha256(f"{customer_id}\x00{period_start_ms}".encode()).digest()
    return "st_" + base64.b32encode(digest).decode("ascii").lower()[:26]


def compute_statement(
    customer_id: str,
    plan: Plan,
    period: Period,
    *,
    active: Period | None,
    quantities: Mapping[str, Decimal],
    cutoff_ms: int,
    credits: CreditState | None = None,
    late: Sequence[LateUsage] = (),
    manual: Sequence[ManualAdjustment] = (),
) -> Statement:
    """The statement of `customer_id` for `period` under `plan`.

    `active`: the part of the period in which the customer existed; None makes an
    adjustment-only statement (no fixed or usage lines: the customer was deleted).
    `quantities`: meter name -> quantity over the period up to `cutoff_ms` (a missing
    meter is 0). Raises ValueError when `active` is not within `period` or a late usage
    is in another currency than the plan's.
    """
    own: list[Line] = []
    burns: list[CreditBurn] = []
    rollover: list[tuple[str, Decimal]] = []
    if active is not None:
        if plan.fixed_price is not None:
            own.append(fixed_line(plan.fixed_price, plan.currency, period, active))
        state = credits or CreditState()
        for price in plan.prices:
            line, used = _usage(price, plan.currency, period, quantities, state)
            own.append(line)
            burns.extend(used)
            carry = rollover_out(price.credits, used)
            if carry > 0:
                rollover.append((price.meter, carry))
    extra: list[Line] = [*_late_lines(late, plan.currency), *_manual_lines(manual, plan.currency)]
    subtotal = _sum((line.amount for line in own), plan.currency)
    total = _sum((subtotal, *(line.amount for line in extra)), plan.currency)
    return Statement(
        id=statement_id(customer_id, period.start_ms), customer_id=customer_id,
        plan=plan.name, currency=plan.currency, period=period, cutoff_ms=cutoff_ms,
        lines=(*own, *extra), subtotal=subtotal, total=total,
        total_minor=to_minor(total, plan.currency), credit_burns=tuple(burns),
        rollover=tuple(rollover),
    )


def _usage(price: Price, currency: str, period: Period, quantities: Mapping[str, Decimal],
           state: CreditState) -> tuple[UsageLine, tuple[CreditBurn, ...]]:
    own = cycle_grants(price.credits, price.meter, period,
                       state.carried.get(price.meter, _ZERO))
    balances = available_for(period, price.meter, (*own, *state.grants), state.burned)
    return price_line(price, quantities.get(price.meter, _ZERO), currency, balances)


def _late_lines(late: Sequence[LateUsage], currency: str) -> list[AdjustmentLine]:
    lines = []
    for usage in sorted(late, key=lambda u: (u.period.start_ms, u.price.meter)):
        if usage.currency != currency:
            raise ValueError(f"late usage of {usage.price.meter} is in {usage.currency}, "
                             f"the statement in {currency}")
        amount = rerate_line(usage.price, usage.finalized, usage.quantity, currency,
                             usage.already_billed)
        lines.append(AdjustmentLine(usage.price.meter, usage.period, usage.quantity, amount))
    return lines


def _manual_lines(manual: Sequence[ManualAdjustment], currency: str) -> list[ManualLine]:
    ordered = sorted(manual, key=lambda m: (m.created_at_ms, m.adjustment_id))
    return [ManualLine(m.adjustment_id, m.description, round_money(m.amount, currency))
            for m in ordered]


def _sum(amounts: Iterable[Decimal], currency: str) -> Decimal:
    total = _ZERO
    for amount in amounts:
        total = EXACT.add(total, amount)
    return round_money(total, currency)  # exact already; gives "0.00", not "0"
