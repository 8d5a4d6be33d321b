"""A statement together with everything it was computed from.

The engine stores a `StatementRecord` for every statement (billing/record_codec.py turns it
into JSON), so that a final statement can be recomputed later from the same inputs and only
the quantities read again (`meterproxy verify` reads them from the raw events).

`rate` is the one place that calls `compute_statement`: drafts, final statements, the usage
preview and `verify` all go through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from billing.credits import CreditState
from billing.cycles import Period
from billing.plans import Plan
from billing.statement import (
    LateUsage,
    ManualAdjustment,
    Statement,
    StatementStatus,
    compute_statement,
    statement_id,
)


@dataclass(frozen=True, slots=True)
class Inputs:
    """What a statement is computed from besides its customer, plan and span.

    `full`: the cycle's whole period, which the fixed price is prorated against; `active`:
    the part of the span in which the customer existed (None: an adjustment-only statement);
    `quantities`: meter -> quantity over the span with every event ingested up to
    `cutoff_ms`.
    """

    full: Period
    active: Period | None
    quantities: Mapping[str, Decimal]
    cutoff_ms: int
    credits: CreditState = field(default_factory=CreditState)
    late: tuple[LateUsage, ...] = ()
    manual: tuple[ManualAdjustment, ...] = ()


@dataclass(frozen=True, slots=True)
class StatementRecord:
    """A statement, the plan it was priced with (as it was then) and its inputs."""

    customer_id: str
    plan: Plan
    span: Period
    inputs: Inputs
    statement: Statement


def rate(customer_id: str, plan: Plan, span: Period, inputs: Inputs,
         status: StatementStatus = "draft") -> StatementRecord:
    """The statement of `customer_id` for `span` under `plan`, with its record.

    Raises ValueError when the active part is not within the full period, or late usage is
    in another currency than the plan's.
    """
    statement = compute_statement(
        customer_id, plan, inputs.full, active=inputs.active, quantities=inputs.quantities,
        cutoff_ms=inputs.cutoff_ms, credits=inputs.credits, late=inputs.late,
        manual=inputs.manual,
    )
    if span != inputs.full:
        # compute_statement prorates against the period it is given; a span that a DELETE or
        # a new cycle cut short is priced on its full period, then named by its own bounds.
        statement = dataclasses.replace(
            statement, id=statement_id(customer_id, span.start_ms), period=span
        )
    if status == "final":
        statement = statement.finalized()
    return StatementRecord(customer_id, plan, span, inputs, statement)

