"""StatementRecord <-> JSON text, exactly: `decode(encode(r)) == r`.

Decimals are written as their text (so "1.50" stays "1.50"), periods as [start, end],
statement lines as objects tagged with their type. The format is versioned ("v"); a record
of an unknown version is a ValueError, never a guess.

Exceptions:
    ValueError -- the text is not a record of this version (KeyError and TypeError of a
                  damaged record are reported as ValueError too).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from billing.credits import CreditBurn, CreditGrant, CreditState, GrantKind
from billing.cycles import Cycle, Period
from billing.plans import CreditPolicy, Plan, Price
from billing.pricing import FixedLine, UsageLine
from billing.records import Inputs, StatementRecord
from billing.statement import (
    AdjustmentLine,
    LateUsage,
    Line,
    ManualAdjustment,
    ManualLine,
    Statement,
    StatementStatus,
)

VERSION = 1
Json = dict[str, Any]


def encode(record: StatementRecord) -> str:
    """The record as compact JSON text."""
    return json.dumps({
        "v": VERSION,
        "customer_id": record.customer_id,
        "plan": _plan(record.plan),
        "span": _period(record.span),
        "inputs": _inputs(record.inputs),
        "statement": _statement(record.statement),
    }, separators=(",", ":"), ensure_ascii=False)


def decode(text: str) -> StatementRecord:
    """The record `encode` wrote. Raises ValueError for anything else."""
    try:
        data = json.loads(text)
        if data.get("v") != VERSION:
            raise ValueError(f"unknown statement record version {data.get('v')!r}")
        return StatementRecord(
            data["customer_id"], plan_from(data["plan"]), period_from(data["span"]),
            _inputs_from(data["inputs"]), _statement_from(data["statement"]),
        )
    except (KeyError, TypeError, AttributeError, InvalidOperation) as exc:
        raise ValueError(f"not a statement record: {exc!r}") from exc


# ------------------------------------------------------------------ plans

def _plan(plan: Plan) -> Json:
    return {"name": plan.name, "currency": plan.currency, "cycle": str(plan.cycle),
            "fixed_price": _opt(plan.fixed_price), "prices": [_price(p) for p in plan.prices]}


def plan_from(data: Json) -> Plan:
    """A Plan from its JSON form."""
    return Plan(data["name"], data["currency"], Cycle.parse(data["cycle"]),
                _opt_from(data["fixed_price"]), tuple(_price_from(p) for p in data["prices"]))


def _price(price: Price) -> Json:
    c = price.credits
    return {"meter": price.meter, "price_per_unit": str(price.price_per_unit),
            "free_threshold": str(price.free_threshold), "unit_size": str(price.unit_size),
            "credits": [str(c.per_cycle), str(c.units_per_credit), str(c.rollover_percent)]}


def _price_from(data: Json) -> Price:
    per_cycle, units_per_credit, rollover = (Decimal(v) for v in data["credits"])
    return Price(data["meter"], Decimal(data["price_per_unit"]), Decimal(data["free_threshold"]),
                 Decimal(data["unit_size"]), CreditPolicy(per_cycle, units_per_credit, rollover))


# ------------------------------------------------------------------ inputs

def _inputs(inputs: Inputs) -> Json:
    return {
        "full": _period(inputs.full),
        "active": None if inputs.active is None else _period(inputs.active),
        "quantities": _decimals(inputs.quantities),
        "cutoff_ms": inputs.cutoff_ms,
        "credits": {"grants": [_grant(g) for g in inputs.credits.grants],
                    "burned": _decimals(inputs.credits.burned),
                    "carried": _decimals(inputs.credits.carried)},
        "late": [_late(u) for u in inputs.late],
        "manual": [_manual(m) for m in inputs.manual],
    }


def _inputs_from(data: Json) -> Inputs:
    credits = data["credits"]
    return Inputs(
        full=period_from(data["full"]),
        active=None if data["active"] is None else period_from(data["active"]),
        quantities=_decimals_from(data["quantities"]),
        cutoff_ms=data["cutoff_ms"],
        credits=CreditState(tuple(_grant_from(g) for g in credits["grants"]),
                            _decimals_from(credits["burned"]),
                            _decimals_from(credits["carried"])),
        late=tuple(_late_from(u) for u in data["late"]),
        manual=tuple(_manual_from(m) for m in data["manual"]),
    )


def _grant(g: CreditGrant) -> Json:
    return {"grant_id": g.grant_id, "meter": g.meter, "credits": str(g.credits),
            "effective_at_ms": g.effective_at_ms, "expires_at_ms": g.expires_at_ms,
            "created_at_ms": g.created_at_ms, "kind": g.kind}


def _grant_from(d: Json) -> CreditGrant:
    return CreditGrant(d["grant_id"], d["meter"], Decimal(d["credits"]), d["effective_at_ms"],
                       d["expires_at_ms"], d["created_at_ms"], cast(GrantKind, d["kind"]))


def _late(u: LateUsage) -> Json:
    return {"period": _period(u.period), "currency": u.currency, "price": _price(u.price),
            "finalized": _line(u.finalized), "quantity": str(u.quantity),
            "already_billed": str(u.already_billed)}


def _late_from(d: Json) -> LateUsage:
    finalized = _line_from(d["finalized"])
    if not isinstance(finalized, UsageLine):
        raise ValueError("late usage must name a usage line")
    return LateUsage(period_from(d["period"]), d["currency"], _price_from(d["price"]),
                     finalized, Decimal(d["quantity"]), Decimal(d["already_billed"]))


def _manual(m: ManualAdjustment) -> Json:
    return {"adjustment_id": m.adjustment_id, "amount": str(m.amount),
            "description": m.description, "created_at_ms": m.created_at_ms}


def _manual_from(d: Json) -> ManualAdjustment:
    return ManualAdjustment(d["adjustment_id"], Decimal(d["amount"]), d["description"],
                            d["created_at_ms"])


# --------------------------------------------------------------- statements

def _statement(s: Statement) -> Json:
    return {
        "id": s.id, "customer_id": s.customer_id, "plan": s.plan, "currency": s.currency,
        "period": _period(s.period), "cutoff_ms": s.cutoff_ms,
        "lines": [_line(line) for line in s.lines],
        "subtotal": str(s.subtotal), "total": str(s.total), "total_minor": s.total_minor,
        "credit_burns": [[b.grant_id, b.kind, b.meter, str(b.credits)] for b in s.credit_burns],
        "rollover": [[meter, str(credits)] for meter, credits in s.rollover],
        "status": s.status,
    }


def _statement_from(d: Json) -> Statement:
    return Statement(
        id=d["id"], customer_id=d["customer_id"], plan=d["plan"], currency=d["currency"],
        period=period_from(d["period"]), cutoff_ms=d["cutoff_ms"],
        lines=tuple(_line_from(line) for line in d["lines"]),
        subtotal=Decimal(d["subtotal"]), total=Decimal(d["total"]),
        total_minor=d["total_minor"],
        credit_burns=tuple(CreditBurn(g, cast(GrantKind, k), m, Decimal(c))
                           for g, k, m, c in d["credit_burns"]),
        rollover=tuple((meter, Decimal(credits)) for meter, credits in d["rollover"]),
        status=cast(StatementStatus, d["status"]),
    )


def _line(line: Line) -> Json:
    if isinstance(line, UsageLine):
        return {"type": "usage", "meter": line.meter, **_decimals({
            "quantity": line.quantity, "unit_size": line.unit_size,
            "free_units": line.free_units, "credits_applied": line.credits_applied,
            "credits_remaining": line.credits_remaining,
            "billable_units": line.billable_units, "unit_price": line.unit_price,
            "amount": line.amount})}
    if isinstance(line, FixedLine):
        return {"type": "fixed", "fixed_price": str(line.fixed_price),
                "active_ms": line.active_ms, "period_ms": line.period_ms,
                "amount": str(line.amount)}
    if isinstance(line, AdjustmentLine):
        return {"type": "adjustment", "meter": line.meter, "period": _period(line.period),
                "quantity": str(line.quantity), "amount": str(line.amount)}
    return {"type": "manual", "adjustment_id": line.adjustment_id,
            "description": line.description, "amount": str(line.amount)}


def _line_from(d: Json) -> Line:
    return _LINE_READERS[d["type"]](d)


def _usage_from(d: Json) -> UsageLine:
    return UsageLine(d["meter"], *(Decimal(d[k]) for k in (
        "quantity", "unit_size", "free_units", "credits_applied", "credits_remaining",
        "billable_units", "unit_price", "amount")))


_LINE_READERS: dict[str, Callable[[Json], Line]] = {
    "usage": _usage_from,
    "fixed": lambda d: FixedLine(Decimal(d["fixed_price"]), d["active_ms"], d["period_ms"],
                                 Decimal(d["amount"])),
    "adjustment": lambda d: AdjustmentLine(d["meter"], period_from(d["period"]),
                                           Decimal(d["quantity"]), Decimal(d["amount"])),
    "manual": lambda d: ManualLine(d["adjustment_id"], d["description"], Decimal(d["amount"])),
}


# ---------------------------------------------------------------- scalars

def _period(period: Period) -> list[int]:
    return [period.start_ms, period.end_ms]


def period_from(data: list[int]) -> Period:
    """A Period from [start, end]."""
    start, end = data
    return Period(start, end)


def _decimals(values: Mapping[str, Decimal]) -> dict[str, str]:
    return {key: str(value) for key, value in values.items()}


def _decimals_from(data: Mapping[str, str]) -> dict[str, Decimal]:
    return {key: Decimal(value) for key, value in data.items()}


def _opt(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _opt_from(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)
