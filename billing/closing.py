"""One customer's statements of a run, as pure functions of what a snapshot read.

`plan_steps` says which periods get a statement now (stored drafts, periods that ended, and
for a preview the periods up to the one asked for) and which of them turn final; `chain`
computes them in period order, each period's credits following from the one before
(rollover, burns of API grants); `adjustment_only` bills late usage and manual adjustments
of a deleted customer whose periods are all final.

The first statement of a chain is the customer's next statement to be finalised: it takes
the pending manual adjustments and the late usage of earlier final periods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from billing.credits import CreditGrant, CreditState
from billing.cycles import Period
from billing.money import EXACT
from billing.records import Inputs, StatementRecord, rate
from billing.statement import LateUsage, ManualAdjustment
from billing.store.base import Customer
from billing.store.ledger import StatementHead
from billing.timeline import BillingPeriod, Timeline

Quantities = Mapping[Period, Mapping[str, Decimal]]  # span -> meter -> quantity


@dataclass(frozen=True, slots=True)
class Account:
    """One customer's billing state as a snapshot holds it.

    `final`: its latest final statement (None: none yet); `burned`: credits of each API
    grant burned by final statements; `pending`: manual adjustments no final statement took.
    """

    customer: Customer
    timeline: Timeline
    final: StatementHead | None
    drafts: tuple[StatementHead, ...]
    grants: tuple[CreditGrant, ...]
    burned: Mapping[str, Decimal]
    pending: tuple[ManualAdjustment, ...]


@dataclass(frozen=True, slots=True)
class Step:
    """A period to compute now, and whether its statement turns final."""

    period: BillingPeriod
    final: bool


def plan_steps(account: Account, now_ms: int, grace_ms: int,
               through_ms: int | None = None) -> tuple[list[Step], int | None]:
    """The periods to compute at `now_ms`: stored drafts and every period that ended by
    then (final once `grace_ms` has passed), and with `through_ms` also the periods that
    start by then (a preview of an open period).

    Also returns when the customer's next statement falls due (its open period ends, or a
    draft turns final); None: never (no plan, or deleted).
    """
    after = None if account.final is None else account.final.period
    drafts = [head.period for head in account.drafts]
    steps: list[Step] = []
    due: list[int] = []
    for period in account.timeline.walk(after, drafts):
        end = period.span.end_ms
        ended = end <= now_ms
        final = ended and end + grace_ms <= now_ms
        if not final:
            due.append(end if not ended else end + grace_ms)
        if not ended and (through_ms is None or period.span.start_ms > through_ms):
            break
        steps.append(Step(period, final))
    return steps, min(due, default=None)


def chain(account: Account, steps: Sequence[Step], quantities: Quantities, cutoff_ms: int,
          late: Sequence[LateUsage] = ()) -> list[StatementRecord]:
    """The statements of `steps`, in order; `quantities` must cover each step's span.

    Raises ValueError when late usage is in another currency than the first statement's
    plan (the caller leaves such usage out).
    """
    burned = dict(account.burned)
    carried: Mapping[str, Decimal] = {}
    previous_end = None
    if account.final is not None:
        carried, previous_end = account.final.rollover, account.final.period.end_ms
    records = []
    for index, step in enumerate(steps):
        period = step.period
        next_to_finalise = index == 0
        inputs = Inputs(
            full=period.full,
            active=period.active,
            quantities=_priced(period, quantities.get(period.span, {})),
            cutoff_ms=cutoff_ms,
            credits=CreditState(
                grants=tuple(g for g in account.grants if g.covers(period.span)),
                burned=dict(burned),
                carried=dict(carried) if previous_end == period.span.start_ms else {},
            ),
            late=tuple(late) if next_to_finalise else (),
            manual=account.pending if next_to_finalise else (),
        )
        record = rate(account.customer.customer_id, period.plan, period.span, inputs,
                      "final" if step.final else "draft")
        for burn in record.statement.credit_burns:
            if burn.kind == "grant":
                burned[burn.grant_id] = EXACT.add(burned.get(burn.grant_id, Decimal(0)),
                                                  burn.credits)
        carried, previous_end = dict(record.statement.rollover), period.span.end_ms
        records.append(record)
    return records


def adjustment_only(account: Account, last: StatementRecord, late: Sequence[LateUsage],
                    now_ms: int, cutoff_ms: int) -> StatementRecord | None:
    """A final statement of only late-usage and manual lines after `last` (the deleted
    customer's latest final statement), from its end to now; None when there is nothing to
    bill or no time has passed since it."""
    if not (late or account.pending) or now_ms <= last.span.end_ms:
        return None
    span = Period(last.span.end_ms, now_ms)
    inputs = Inputs(full=span, active=None, quantities={}, cutoff_ms=cutoff_ms,
                    late=tuple(late), manual=account.pending)
    return rate(account.customer.customer_id, last.plan, span, inputs, "final")


def _priced(period: BillingPeriod, quantities: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """The quantities of the meters the plan prices (what the statement depends on)."""
    return {p.meter: quantities.get(p.meter, Decimal(0)) for p in period.plan.prices}
