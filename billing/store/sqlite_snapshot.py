"""The SQLite `LedgerSnapshot`: the billing engine's reads, inside one read transaction.

Reads are bulk: a list of customers goes to SQLite as one JSON array (`json_each`), so a
period close reads ten thousand customers in a handful of queries, each a series of index
seeks, whatever the number of events.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar, cast

import aiosqlite

from billing.credits import CreditGrant
from billing.cycles import Period
from billing.meters import Aggregate, AggregationType, Meter
from billing.money import EXACT
from billing.statement import ManualAdjustment, StatementStatus
from billing.store.base import NOTHING_SEALED, ROLLUP_BUCKETS, Customer, fold_rows, plan_read
from billing.store.epochs import sqlite_in_epochs
from billing.store.ledger import (
    AccountData,
    Burn,
    Ids,
    LateProbe,
    PlanAssignment,
    StatementHead,
    StoredStatement,
)
from billing.store.sqlite_write import WATERMARK

T = TypeVar("T")

# Must equal the threshold of the partial index events_late (migration 0002).
LATE_LAG_MS = 300_000

HEAD_COLUMNS = "id, customer_id, period_start_ms, period_end_ms, status, cutoff_ms, plan, rollover"
STORED_COLUMNS = f"{HEAD_COLUMNS}, finalized_at_ms, record"
_GRANT_COLUMNS = (
    "customer_id, grant_id, meter, credits, effective_at_ms, expires_at_ms, created_at_ms"
)
# Aggregate rows of a ReadPlan for a list of customers: rollup rows inside the rollup range,
# bucket rows elsewhere; one primary-key range per customer.
_PLANNED_FROM = """
    FROM json_each(:meters) AS m CROSS JOIN json_each(:customers) AS c
    CROSS JOIN meter_aggregates AS a
    ON a.meter = m.value AND a.customer_id = c.value
       AND a.bucket_start_ms >= :start AND a.bucket_start_ms < :end
       AND a.size_ms = CASE WHEN a.bucket_start_ms >= :rollup_start
                             AND a.bucket_start_ms < :rollup_end
                            THEN :rollup_ms ELSE :bucket_ms END"""
# `last` needs each row's (last_ts, last_seq); count, sum and max are combined per customer in
# SQLite, which hands back one row per meter and customer instead of one per span: the values
# as one text (integers then add up exactly as Python ints; other decimals as Decimals).
_PLANNED_ROWS = "SELECT a.meter, a.customer_id, a.count, a.value, a.last_ts_ms, a.last_seq"
_PLANNED_GROUPS = """
    SELECT a.meter, a.customer_id, SUM(a.count), group_concat(a.value),
           MAX(a.value GLOB '*[^0-9-]*' OR a.value = '-0')"""
_RAW_EDGE = f"""
    SELECT e.customer_id, e.seq, e.timestamp_ms, e.metadata
    FROM json_each(?1) AS c CROSS JOIN events AS e
    ON e.customer_id = c.value AND e.event_name = ?2 AND e.timestamp_ms >= ?3
       AND e.timestamp_ms < ?4 AND {sqlite_in_epochs("e", "?3", "?4")}
    ORDER BY e.seq"""
_ACCOUNTS = """
    SELECT
      (SELECT json_group_array(json_array(id, created_at_ms, plan, deleted_at_ms))
       FROM customers WHERE {id}),
      (SELECT json_group_array(json_array(customer_id, effective_from_ms, plan))
       FROM plan_assignments WHERE {customer}),
      (SELECT json_group_array(json_array(""" + HEAD_COLUMNS + """))
       FROM statements WHERE status = 'draft' AND {customer}),
      (SELECT json_group_array(json_array(""" + HEAD_COLUMNS + """))
       FROM statements WHERE (customer_id, period_start_ms) IN
         (SELECT customer_id, MAX(period_start_ms) FROM statements
          WHERE status = 'final' AND {customer} GROUP BY customer_id)),
      (SELECT json_group_array(json_array(""" + _GRANT_COLUMNS + """))
       FROM credit_grants WHERE {customer}),
      (SELECT json_group_array(json_array(b.customer_id, s.period_start_ms, s.status, b.grant_id,
                                          b.credits))
       FROM credit_burns AS b JOIN statements AS s ON s.id = b.statement_id WHERE {burn}),
      (SELECT json_group_array(json_array(customer_id, adjustment_id, amount, description,
                                          created_at_ms))
       FROM manual_adjustments WHERE statement_id IS NULL AND {customer})"""
# Late events that waited long enough to be in the partial index...
_LATE_INDEXED = f"""
    SELECT p.value ->> 0, MIN(e.timestamp_ms)
    FROM json_each(?) AS p CROSS JOIN events AS e INDEXED BY events_late
    ON e.customer_id = p.value ->> 0 AND e.ingested_at_ms > p.value ->> 1
       AND e.ingested_at_ms - e.timestamp_ms > {LATE_LAG_MS} AND e.timestamp_ms < p.value ->> 2
    GROUP BY 1"""
# ...and the others, found by timestamp: they were ingested within LATE_LAG_MS of it.
_LATE_RECENT = f"""
    SELECT p.value ->> 0, MIN(e.timestamp_ms)
    FROM json_each(?) AS p CROSS JOIN json_each(?) AS n CROSS JOIN events AS e
    ON e.customer_id = p.value ->> 0 AND e.event_name = n.value
       AND e.timestamp_ms > (p.value ->> 1) - {LATE_LAG_MS} AND e.timestamp_ms < p.value ->> 2
       AND e.ingested_at_ms > p.value ->> 1
       AND {sqlite_in_epochs("e", f"(p.value ->> 1) - {LATE_LAG_MS} + 1", "p.value ->> 2")}
    GROUP BY 1"""


class SqliteLedgerSnapshot:
    """`LedgerSnapshot` on a connection inside a read transaction."""

    def __init__(self, conn: aiosqlite.Connection, meters: Mapping[str, Meter],
                 bucket_ms: int) -> None:
        self._conn = conn
        self._meters = meters
        self._bucket_ms = bucket_ms
        self._sealed: dict[str, int] | None = None  # rollups_until per meter, read when needed

    async def _rows(self, sql: str, params: Any = ()) -> Iterable[Any]:
        return await self._conn.execute_fetchall(sql, params)

    async def watermark(self) -> int:
        rows = await self._rows(WATERMARK)
        return int(next(iter(rows))[0] or 0)

    async def accounts(self, ids: Ids = None) -> AccountData:
        # One query, one trip to the connection's thread: each kind of row as a JSON array.
        customer = "1" if ids is None else "customer_id IN (SELECT value FROM json_each(:ids))"
        sql = _ACCOUNTS.format(customer=customer, id=customer.replace("customer_id", "id"),
                               burn=customer.replace("customer_id", "b.customer_id"))
        params = {} if ids is None else {"ids": json.dumps(list(ids))}
        row = next(iter(await self._rows(sql, params)))
        customers, assignments, drafts, finals, grants, burns, pending = (
            json.loads(text) for text in row)
        heads = sorted((head_from_row(h) for h in (*finals, *drafts)),
                       key=lambda h: (h.customer_id, h.period.start_ms))
        return AccountData(
            customers=sorted((Customer(*c) for c in customers), key=lambda c: c.customer_id),
            assignments=_grouped((a[0], PlanAssignment(a[1], a[2]))
                                 for a in sorted(assignments, key=lambda a: (a[0], a[1]))),
            heads=_grouped((h.customer_id, h) for h in heads),
            grants=_grouped((g[0], grant_from_row(g[1:])) for g in grants),
            burns=_grouped((b[0], Burn(b[1], cast(StatementStatus, b[2]), b[3], Decimal(b[4])))
                           for b in burns),
            pending=_grouped((m[0], adjustment_from_row(m[1:])) for m in pending),
        )

    async def assignments(self, ids: Ids = None) -> dict[str, list[PlanAssignment]]:
        where, params = _only(ids)
        rows = await self._rows(
            f"SELECT customer_id, effective_from_ms, plan FROM plan_assignments {where}"
            " ORDER BY customer_id, effective_from_ms",
            params,
        )
        return _grouped((row[0], PlanAssignment(row[1], row[2])) for row in rows)

    async def accounts_version(self) -> tuple[int, ...]:
        row = next(iter(await self._rows(
            "SELECT (SELECT MAX(rowid) FROM customers),"
            " (SELECT COUNT(*) FROM customers WHERE deleted_at_ms IS NOT NULL),"
            " (SELECT COUNT(*) FROM plan_assignments),"
            " (SELECT MAX(assigned_at_ms) FROM plan_assignments)")))
        return tuple(value or 0 for value in row)

    async def late_since(self, probes: Sequence[LateProbe]) -> dict[str, int]:
        indexed = json.dumps([(p.customer_id, p.after_ms, p.before_ms) for p in probes])
        found = {row[0]: row[1] for row in await self._rows(_LATE_INDEXED, (indexed,))}
        recent = [(p.customer_id, p.after_ms, p.before_ms) for p in probes
                  if p.after_ms - LATE_LAG_MS < p.before_ms]
        if recent:
            names = json.dumps(sorted({m.event_name for m in self._meters.values()}))
            for customer_id, ts in await self._rows(_LATE_RECENT, (json.dumps(recent), names)):
                found[customer_id] = min(ts, found.get(customer_id, ts))
        return found

    async def final_records(self, customer_id: str, ending_after_ms: int) -> list[StoredStatement]:
        rows = await self._rows(
            f"SELECT {STORED_COLUMNS} FROM statements WHERE customer_id = ? AND status = 'final'"
            " AND period_end_ms > ? ORDER BY period_start_ms",
            (customer_id, ending_after_ms),
        )
        return [stored_from_row(row) for row in rows]

    async def statement_at(self, customer_id: str, at_ms: int) -> StoredStatement | None:
        rows = await self._rows(
            f"SELECT {STORED_COLUMNS} FROM statements WHERE customer_id = ?"
            " AND period_start_ms <= ? ORDER BY period_start_ms DESC LIMIT 1",
            (customer_id, at_ms),
        )
        found = [stored_from_row(row) for row in rows]
        return found[0] if found and at_ms < found[0].head.period.end_ms else None

    async def quantities(
        self, meters: Sequence[str], customers: Sequence[str], period: Period
    ) -> dict[str, dict[str, Decimal]]:
        kinds = {name: self._meter(name) for name in meters}
        rows: dict[str, list[Sequence[Any]]] = {name: [] for name in meters}
        ids = json.dumps(list(customers))
        # Meters sealed up to the same day read their rows in the same queries (usually all).
        sealed = await self._sealed_until()
        by_mark: dict[int, dict[str, Meter]] = {}
        for name, meter in kinds.items():
            by_mark.setdefault(sealed.get(name, NOTHING_SEALED), {})[name] = meter
        for mark, group in by_mark.items():
            plan = plan_read(period.start_ms, period.end_ms, self._bucket_ms, mark)
            if plan.buckets is not None:
                first, end = plan.buckets
                rollup_start, rollup_end = plan.rollups or (end, end)  # no rollup: none read
                params = {"customers": ids, "start": first, "end": end,
                          "rollup_start": rollup_start, "rollup_end": rollup_end,
                          "rollup_ms": self._bucket_ms * ROLLUP_BUCKETS,
                          "bucket_ms": self._bucket_ms}
                await self._planned(group, rows, params)
        for start, end in plan_read(period.start_ms, period.end_ms, self._bucket_ms).raw:
            for name, meter in kinds.items():  # the unaligned edges, from the raw events
                raw = await self._rows(_RAW_EDGE, (ids, meter.event_name, start, end))
                rows[name].extend((c, agg.count, agg.value, agg.last_ts, agg.last_seq)
                                  for c, agg in _fold_by_customer(meter, raw).items())
        return {name: reduce_rows(kinds[name].aggregation, rows[name]) for name in meters}

    async def _sealed_until(self) -> dict[str, int]:
        """Each meter's rollups_until in this snapshot (read once)."""
        if self._sealed is None:
            self._sealed = {row[0]: row[1] for row in await self._rows(
                "SELECT meter, rollups_until FROM meter_state")}
        return self._sealed

    async def _planned(self, kinds: Mapping[str, Meter], rows: dict[str, list[Sequence[Any]]],
                       params: dict[str, Any]) -> None:
        """Add the aggregate rows of a ReadPlan to `rows` (combined per customer, but for
        `last` meters)."""
        last = [name for name, meter in kinds.items() if meter.aggregation == "last"]
        other = [name for name in kinds if name not in last]
        if last:
            query = _PLANNED_ROWS + _PLANNED_FROM
            for row in await self._rows(query, {**params, "meters": json.dumps(last)}):
                rows[row[0]].append(row[1:])
        if other:
            query = _PLANNED_GROUPS + _PLANNED_FROM + " GROUP BY a.meter, a.customer_id"
            for name, customer_id, count, values, fractions in await self._rows(
                    query, {**params, "meters": json.dumps(other)}):
                value = _combined(kinds[name].aggregation, values, integers=not fractions)
                rows[name].append((customer_id, count, value, 0, 0))

    def _meter(self, name: str) -> Meter:
        try:
            return self._meters[name]
        except KeyError:
            raise KeyError(f"unknown meter {name!r}") from None


# ------------------------------------------------------------------- row values


def head_from_row(row: Sequence[Any]) -> StatementHead:
    """A StatementHead from HEAD_COLUMNS."""
    rollover = {meter: Decimal(text) for meter, text in json.loads(row[7]).items()}
    return StatementHead(row[0], row[1], Period(row[2], row[3]), row[4], row[5], row[6],
                         rollover)


def stored_from_row(row: Sequence[Any]) -> StoredStatement:
    """A StoredStatement from STORED_COLUMNS."""
    return StoredStatement(head_from_row(row), row[8], row[9])


def grant_from_row(row: Sequence[Any]) -> CreditGrant:
    """A CreditGrant from grant_id, meter, credits, effective, expires, created."""
    return CreditGrant(row[0], row[1], Decimal(row[2]), row[3], row[4], row[5])


def adjustment_from_row(row: Sequence[Any]) -> ManualAdjustment:
    """A ManualAdjustment from adjustment_id, amount, description, created."""
    return ManualAdjustment(row[0], Decimal(row[1]), row[2], row[3])


def _only(ids: Ids, column: str = "customer_id") -> tuple[str, tuple[str, ...]]:
    """A WHERE clause keeping the listed customers (none when `ids` is None)."""
    if ids is None:
        return "", ()
    return f"WHERE {column} IN (SELECT value FROM json_each(?))", (json.dumps(list(ids)),)


def _grouped(pairs: Iterable[tuple[str, T]]) -> dict[str, list[T]]:
    groups: dict[str, list[T]] = {}
    for key, value in pairs:
        groups.setdefault(key, []).append(value)
    return groups


def _combined(kind: AggregationType, values: str, integers: bool) -> Decimal:
    """The sum or max of comma-separated Decimal texts (the count for count meters, which
    reduce_rows reads from the count column)."""
    if kind == "count":
        return Decimal(0)
    parts = values.split(",")
    if integers:  # exact whatever the size: Python ints
        return Decimal(sum(map(int, parts)) if kind == "sum" else max(map(int, parts)))
    return functools.reduce(EXACT.add if kind == "sum" else EXACT.max, map(Decimal, parts))


def reduce_rows(kind: AggregationType, rows: Iterable[Sequence[Any]]) -> dict[str, Decimal]:
    """customer -> quantity of aggregate rows (customer, count, value, last_ts, last_seq):
    what `merge` over the rows and then `quantity` give, without building an Aggregate per
    row (a period close reads millions of rows)."""
    if kind == "count":
        counts: dict[str, int] = {}
        for customer_id, count, *_ in rows:
            counts[customer_id] = counts.get(customer_id, 0) + count
        return {c: Decimal(n) for c, n in counts.items()}
    if kind in ("sum", "max"):
        combine = EXACT.add if kind == "sum" else EXACT.max
        found: dict[str, Decimal] = {}
        for customer_id, _, value, *_ in rows:
            number = Decimal(value)
            known = found.get(customer_id)
            found[customer_id] = number if known is None else combine(known, number)
        return found
    latest: dict[str, tuple[int, int, Decimal]] = {}
    for customer_id, _, value, ts, seq in rows:
        number, best = Decimal(value), latest.get(customer_id)
        # the latest by (timestamp, seq); a full tie is broken by value, as `merge` does
        if best is None or (ts, seq) > best[:2] or (
                (ts, seq) == best[:2] and number.compare_total(best[2]) > 0):
            latest[customer_id] = (ts, seq, number)
    return {c: number for c, (_, _, number) in latest.items()}


def _fold_by_customer(meter: Meter, rows: Iterable[Sequence[Any]]) -> dict[str, Aggregate]:
    """The meter's fold of raw (customer_id, seq, timestamp, metadata) rows per customer."""
    by_customer: dict[str, list[Sequence[Any]]] = {}
    for row in rows:
        by_customer.setdefault(row[0], []).append(row[1:])
    folded = {c: fold_rows(meter, customer_rows) for c, customer_rows in by_customer.items()}
    return {c: agg for c, agg in folded.items() if agg is not None}
