"""`meterproxy verify`: recompute every final statement from the raw events and compare.

Each final statement's record holds every input it was computed from. Verification reads
the quantities again from the raw events (never the aggregates) with the statement's cutoff,
for its own period and for every period its late-usage lines re-rated, recomputes the
statement from those and the recorded credits, adjustments and plan, and reports every way
in which the result differs from what was stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from billing.record_codec import decode
from billing.records import StatementRecord, rate
from billing.render import line_to_json
from billing.statement import LateUsage, Statement
from billing.store.ledger import LedgerStore, StoredStatement

PAGE = 200  # final statements read per query


@dataclass(frozen=True, slots=True)
class Difference:
    """How one final statement differs from its recomputation."""

    statement_id: str
    customer_id: str
    problems: tuple[str, ...]


async def verify(store: LedgerStore, timezone: ZoneInfo) -> AsyncIterator[Difference | None]:
    """Yield, per final statement in id order, None when it recomputes identically, else
    its Difference. Raises StoreError."""
    after = ""
    while page := await store.final_statements(after, PAGE):
        for stored in page:
            yield await _check(store, stored, timezone)
        after = page[-1].head.statement_id


async def _check(store: LedgerStore, stored: StoredStatement,
                 timezone: ZoneInfo) -> Difference | None:
    head = stored.head
    try:
        record = decode(stored.record)
        again = await _recompute(store, record)
    except (ValueError, KeyError) as exc:
        return Difference(head.statement_id, head.customer_id, (f"cannot recompute: {exc}",))
    problems = _compare(record.statement, again, timezone)
    if (head.cutoff_ms, head.period) != (record.statement.cutoff_ms, record.statement.period):
        problems.append("the stored cutoff or period disagrees with the record")
    return Difference(head.statement_id, head.customer_id, tuple(problems)) if problems else None


async def _recompute(store: LedgerStore, record: StatementRecord) -> Statement:
    inputs, cid, cutoff = record.inputs, record.customer_id, record.inputs.cutoff_ms
    quantities = inputs.quantities
    if inputs.active is not None:
        quantities = await store.raw_quantities(cid, list(inputs.quantities), record.span,
                                                cutoff)
    late: list[LateUsage] = []
    for usage in inputs.late:
        raw = await store.raw_quantities(cid, [usage.price.meter], usage.period, cutoff)
        late.append(dataclasses.replace(usage, quantity=raw[usage.price.meter]))
    recomputed = dataclasses.replace(inputs, quantities=quantities, late=tuple(late))
    return rate(cid, record.plan, record.span, recomputed, "final").statement


def _compare(stored: Statement, again: Statement, timezone: ZoneInfo) -> list[str]:
    problems = []
    for name in ("subtotal", "total", "total_minor", "credit_burns", "rollover"):
        was, now = getattr(stored, name), getattr(again, name)
        if was != now:
            problems.append(f"{name}: stored {was}, recomputed {now}")
    if len(stored.lines) != len(again.lines):
        problems.append(f"{len(stored.lines)} lines stored, {len(again.lines)} recomputed")
    for was_line, now_line in zip(stored.lines, again.lines, strict=False):
        was, now = line_to_json(was_line, timezone), line_to_json(now_line, timezone)
        changed = [f"{k} {was[k]} -> {now[k]}" for k in was if was[k] != now[k]]
        if changed:
            problems.append(f"line {was['description']}: {', '.join(changed)}")
    if not problems and stored != again:
        problems.append("the statement differs from its recomputation")
    return problems
