"""The engine's reads: customers' accounts, quantities and late usage, from one snapshot.

Every function takes the open `LedgerSnapshot`, so what a run computes from agrees with
itself: the quantities are those of exactly the events up to the snapshot's watermark.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from billing.closing import Account, Quantities, Step
from billing.cycles import Period
from billing.late import late_usage
from billing.money import EXACT
from billing.plans import Plan
from billing.record_codec import decode
from billing.records import StatementRecord
from billing.statement import LateUsage
from billing.store.ledger import Ids, LateProbe, LedgerSnapshot
from billing.timeline import CycleBook, Timeline

log = logging.getLogger(__name__)

QUANTITY_CHUNK = 500  # customers per quantities read: bounds each reduction on the loop


@dataclass(frozen=True, slots=True)
class Setup:
    """The configuration accounts are read with."""

    plans: Mapping[str, Plan]
    default_plan: str | None
    cycles: CycleBook


@dataclass(frozen=True, slots=True)
class Earlier:
    """A customer's final statements that late usage concerns, and that usage."""

    finals: tuple[StatementRecord, ...]
    late: tuple[LateUsage, ...]


async def accounts(snap: LedgerSnapshot, setup: Setup, ids: Ids = None) -> list[Account]:
    """The accounts of the customers (all when `ids` is None), ordered by id."""
    data = await snap.accounts(ids)
    found = []
    for customer in data.customers:
        cid = customer.customer_id
        own = data.heads.get(cid, [])
        finals = [h for h in own if h.status == "final"]
        burned: dict[str, Decimal] = {}
        for burn in data.burns.get(cid, ()):
            if burn.status == "final":
                burned[burn.grant_id] = EXACT.add(burned.get(burn.grant_id, Decimal(0)),
                                                  burn.credits)
        timeline = Timeline(customer, data.assignments.get(cid, ()), setup.plans,
                            setup.default_plan, setup.cycles)
        found.append(Account(
            customer, timeline, finals[-1] if finals else None,
            tuple(h for h in own if h.status == "draft"), tuple(data.grants.get(cid, ())),
            burned, tuple(data.pending.get(cid, ())),
        ))
    return found


async def quantities(snap: LedgerSnapshot,
                     steps: Mapping[str, Sequence[Step]]) -> dict[str, Quantities]:
    """customer -> span -> meter -> quantity for every step of every customer: one read
    per distinct span, for all its customers at once."""
    by_span: dict[Period, tuple[set[str], set[str]]] = {}
    for customer_id, customer_steps in steps.items():
        for step in customer_steps:
            customers, meters = by_span.setdefault(step.period.span, (set(), set()))
            customers.add(customer_id)
            meters.update(p.meter for p in step.period.plan.prices)
    found: dict[str, dict[Period, dict[str, Decimal]]] = {}
    for span, (customers, meters) in by_span.items():
        ordered = sorted(customers)
        for start in range(0, len(ordered), QUANTITY_CHUNK):  # the loop runs between reads
            chunk = ordered[start:start + QUANTITY_CHUNK]
            read = await snap.quantities(sorted(meters), chunk, span)
            for meter, per_customer in read.items():
                for customer_id, quantity in per_customer.items():
                    found.setdefault(customer_id, {}).setdefault(span, {})[meter] = quantity
    return dict(found)


async def earlier(snap: LedgerSnapshot, wanted: Iterable[Account]) -> dict[str, Earlier]:
    """Late usage of the final periods of the `wanted` accounts: events ingested after
    their latest final statement's cutoff with a timestamp before its end."""
    probes = [LateProbe(a.customer.customer_id, a.final.cutoff_ms, a.final.period.end_ms)
              for a in wanted if a.final is not None]
    if not probes:
        return {}
    found = {}
    for customer_id, since_ms in (await snap.late_since(probes)).items():
        finals = tuple(decode(s.record) for s in await snap.final_records(customer_id, since_ms))
        checked = [r for r in finals if r.inputs.active is not None]
        now: dict[Period, Mapping[str, Decimal]] = {}
        for record in checked:
            meters = [p.meter for p in record.plan.prices]
            read = await snap.quantities(meters, [customer_id], record.span)
            now[record.span] = {m: q.get(customer_id, Decimal(0)) for m, q in read.items()}
        found[customer_id] = Earlier(finals, tuple(late_usage(finals, now)))
    return found


async def last_final(snap: LedgerSnapshot, account: Account) -> StatementRecord | None:
    """The account's latest final statement as a record (None: it has none)."""
    if account.final is None:
        return None
    stored = await snap.final_records(account.customer.customer_id,
                                      account.final.period.end_ms - 1)
    return decode(stored[-1].record) if stored else None


def in_currency(late: Sequence[LateUsage], currency: str, customer_id: str) -> tuple[
        LateUsage, ...]:
    """The late usage a statement in `currency` can carry; the rest is logged and left out
    (a statement has one currency: usage of a period billed in another cannot move)."""
    kept = tuple(u for u in late if u.currency == currency)
    for usage in late:
        if usage.currency != currency:
            log.warning("late usage of %s for %s in %s cannot go on a %s statement; not billed",
                        usage.price.meter, customer_id, usage.currency, currency)
    return kept
