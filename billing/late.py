"""Late usage: what final periods gained from events ingested after they became final.

A final period's quantities are read again at a newer cutoff; every meter whose quantity
differs from what its statements last billed (the final line, or the latest adjustment of
that period and meter) becomes a `LateUsage`, re-rated with the period's plan, free
threshold and credits as finalised (billing/pricing.py `rerate_line`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from billing.cycles import Period
from billing.money import EXACT
from billing.pricing import UsageLine
from billing.records import StatementRecord
from billing.statement import AdjustmentLine, LateUsage


def late_usage(finals: Sequence[StatementRecord],
               quantities: Mapping[Period, Mapping[str, Decimal]]) -> list[LateUsage]:
    """The late usage of the final periods in `finals` (one customer's final statements,
    in period order, including every one after the earliest period concerned).

    `quantities`: span -> meter -> quantity now, for the periods to check (the others are
    not checked).
    """
    found: list[LateUsage] = []
    for index, record in enumerate(finals):
        now = quantities.get(record.span)
        if now is None or record.inputs.active is None:
            continue
        later = finals[index + 1:]
        for line in record.statement.lines:
            if isinstance(line, UsageLine):
                usage = _late_line(record, line, now.get(line.meter, Decimal(0)), later)
                if usage is not None:
                    found.append(usage)
    return found


def _late_line(record: StatementRecord, line: UsageLine, quantity: Decimal,
               later: Sequence[StatementRecord]) -> LateUsage | None:
    billed_quantity, billed = line.quantity, line.amount
    for adjustment in _adjustments(later, record.span, line.meter):
        billed_quantity = adjustment.quantity
        billed = EXACT.add(billed, adjustment.amount)
    if quantity == billed_quantity:
        return None
    price = next(p for p in record.plan.prices if p.meter == line.meter)
    return LateUsage(record.span, record.plan.currency, price, line, quantity, billed)


def _adjustments(records: Sequence[StatementRecord], span: Period,
                 meter: str) -> list[AdjustmentLine]:
    return [line for record in records for line in record.statement.lines
            if isinstance(line, AdjustmentLine) and line.period == span and line.meter == meter]
