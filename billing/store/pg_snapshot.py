"""The PostgreSQL `LedgerSnapshot`: the billing engine's reads, inside one read transaction.

`PostgresStore.billing_snapshot()` opens a REPEATABLE READ, read-only transaction, so every
read here sees one committed state of the shared database: the ingest counter (the fleet's
watermark) agrees with the events and aggregates, whichever replica committed them. A list
of customers travels as one array parameter (`= ANY($1)`); None reads every customer.

Rows come back in the column order of the SQLite engine's queries, so both engines share the
row decoders and the row reduction of billing/store/sqlite_snapshot.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from billing.cycles import Period
from billing.meters import Aggregate, Meter
from billing.statement import StatementStatus
from billing.store.base import ROLLUP_BUCKETS, Customer, fold_rows, plan_read
from billing.store.epochs import pg_in_epochs
from billing.store.ledger import (
    AccountData,
    Burn,
    Ids,
    LateProbe,
    PlanAssignment,
    StoredStatement,
)
from billing.store.pg_aggregates import MERGED_LAST, MERGED_VALUE, from_numeric
from billing.store.pg_connection import Connection, Row
from billing.store.pg_rollups import sealed_plan
from billing.store.sqlite_snapshot import (
    HEAD_COLUMNS,
    LATE_LAG_MS,
    STORED_COLUMNS,
    adjustment_from_row,
    grant_from_row,
    head_from_row,
    reduce_rows,
    stored_from_row,
)

T = TypeVar("T")

# $1: the customer ids, or NULL for every customer (each execution is planned with its values,
# so the NULL test folds away).
_OF = "($1::text[] IS NULL OR customer_id = ANY($1::text[]))"
_CUSTOMERS = """
    SELECT id, created_at_ms, plan, deleted_at_ms FROM customers
    WHERE ($1::text[] IS NULL OR id = ANY($1::text[])) ORDER BY id"""
_ASSIGNMENTS = f"""
    SELECT customer_id, effective_from_ms, plan FROM plan_assignments WHERE {_OF}
    ORDER BY customer_id, effective_from_ms"""
_HEADS = f"""
    SELECT {HEAD_COLUMNS} FROM statements WHERE status = 'draft' AND {_OF}
    UNION ALL
    (SELECT DISTINCT ON (customer_id) {HEAD_COLUMNS} FROM statements
     WHERE status = 'final' AND {_OF} ORDER BY customer_id, period_start_ms DESC)"""
_GRANTS = f"""
    SELECT customer_id, grant_id, meter, credits, effective_at_ms, expires_at_ms, created_at_ms
    FROM credit_grants WHERE {_OF} ORDER BY customer_id, grant_id"""
_BURNS = f"""
    SELECT b.customer_id, s.period_start_ms, s.status, b.grant_id, b.credits
    FROM credit_burns AS b JOIN statements AS s ON s.id = b.statement_id
    WHERE {_OF.replace("customer_id", "b.customer_id")}
    ORDER BY b.customer_id, s.period_start_ms, b.grant_id"""
_PENDING = f"""
    SELECT customer_id, adjustment_id, amount, description, created_at_ms
    FROM manual_adjustments WHERE statement_id IS NULL AND {_OF}
    ORDER BY customer_id, adjustment_id"""
# Late events that waited long enough to be in the partial index events_late...
_LATE_INDEXED = f"""
    SELECT p.customer_id, MIN(e.timestamp_ms)
    FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS p (customer_id, after_ms, before_ms)
    JOIN events AS e ON e.customer_id = p.customer_id AND e.ingested_at_ms > p.after_ms
        AND e.ingested_at_ms - e.timestamp_ms > {LATE_LAG_MS} AND e.timestamp_ms < p.before_ms
    GROUP BY 1"""
# ...and the others, found by timestamp: they were ingested within LATE_LAG_MS of it.
_LATE_RECENT = f"""
    SELECT p.customer_id, MIN(e.timestamp_ms)
    FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS p (customer_id, after_ms, before_ms)
    CROSS JOIN unnest($4::text[]) AS n (event_name)
    JOIN events AS e ON e.customer_id = p.customer_id AND e.event_name = n.event_name
        AND e.timestamp_ms > p.after_ms - {LATE_LAG_MS} AND e.timestamp_ms < p.before_ms
        AND e.ingested_at_ms > p.after_ms
        AND {pg_in_epochs("e", f"p.after_ms - {LATE_LAG_MS} + 1", "p.before_ms")}
    GROUP BY 1"""
# The aggregate rows of a ReadPlan for lists of meters and customers (rollup rows in
# [$5, $6), bucket rows in [$3, $5) and [$6, $4)), merged server side into one row per meter
# and customer with any: (meter, customer, count, value, last_ts, last_seq). {value} and
# {last} are the merges of pg_aggregates; count and sum meters need no latest event
# ({last}: 0, 0). Each (meter, customer) pair is three range scans of the primary key
# (LATERAL): the planner would rather filter the whole table through two long ANY lists.
_SPANS = """
    SELECT count, value, last_ts_ms, last_seq FROM meter_aggregates
    WHERE meter = m.meter AND customer_id = c.customer_id AND size_ms = {size}::bigint
        AND bucket_start_ms >= {start} AND bucket_start_ms < {end}"""
_PLANNED_AGGREGATES = f"""
    SELECT m.meter, c.customer_id, s.* FROM unnest($1::text[]) AS m (meter)
    CROSS JOIN unnest($2::text[]) AS c (customer_id)
    CROSS JOIN LATERAL (
        SELECT sum(count) AS events, {{value}}, {{last}} FROM (
            {_SPANS.format(size="$7", start="$5", end="$6")}
            UNION ALL {_SPANS.format(size="$8", start="$3", end="$5")}
            UNION ALL {_SPANS.format(size="$8", start="$6", end="$4")}) AS a) AS s
    WHERE s.events IS NOT NULL"""
# Raw events at a period's unaligned edges: one range of the events index per customer.
_RAW_EDGE = f"""
    SELECT c.customer_id, e.seq, e.timestamp_ms, e.metadata
    FROM unnest($1::text[]) AS c (customer_id) CROSS JOIN LATERAL (
        SELECT seq, timestamp_ms, metadata FROM events AS e
        WHERE customer_id = c.customer_id AND event_name = $2 AND timestamp_ms >= $3
            AND timestamp_ms < $4 AND {pg_in_epochs("e", "$3", "$4")}) AS e
    ORDER BY e.seq"""


class PostgresLedgerSnapshot:
    """`LedgerSnapshot` on a connection inside a read-only REPEATABLE READ transaction."""

    def __init__(self, conn: Connection, meters: Mapping[str, Meter], bucket_ms: int) -> None:
        self._conn = conn
        self._meters = meters
        self._bucket_ms = bucket_ms
        self._rollups_until: int | None = None  # read once per snapshot, when needed

    async def watermark(self) -> int:
        """The ingest counter: every append stamps and advances it in its own transaction."""
        return int(await self._conn.fetchval("SELECT ingested_at_ms FROM ingest_counter"))

    async def accounts(self, ids: Ids = None) -> AccountData:
        only = None if ids is None else list(ids)
        fetch = self._conn.fetch
        heads = sorted((head_from_row(row) for row in await fetch(_HEADS, only)),
                       key=lambda h: (h.customer_id, h.period.start_ms))
        return AccountData(
            customers=[Customer(*row) for row in await fetch(_CUSTOMERS, only)],
            assignments=_grouped((row[0], PlanAssignment(row[1], row[2]))
                                 for row in await fetch(_ASSIGNMENTS, only)),
            heads=_grouped((h.customer_id, h) for h in heads),
            grants=_grouped((row[0], grant_from_row(row[1:]))
                            for row in await fetch(_GRANTS, only)),
            burns=_grouped((row[0], _burn(row)) for row in await fetch(_BURNS, only)),
            pending=_grouped((row[0], adjustment_from_row(row[1:]))
                             for row in await fetch(_PENDING, only)),
        )

    async def assignments(self, ids: Ids = None) -> dict[str, list[PlanAssignment]]:
        rows = await self._conn.fetch(_ASSIGNMENTS, None if ids is None else list(ids))
        return _grouped((row[0], PlanAssignment(row[1], row[2])) for row in rows)

    async def accounts_version(self) -> tuple[int, ...]:
        """Customers only ever gain rows (DELETE marks them), so their count moves with
        every creation; plan assignments may be replaced one for one, hence the latest
        assignment time too."""
        row = await self._conn.fetchrow(
            "SELECT (SELECT count(*) FROM customers),"
            " (SELECT count(*) FROM customers WHERE deleted_at_ms IS NOT NULL),"
            " (SELECT count(*) FROM plan_assignments),"
            " (SELECT max(assigned_at_ms) FROM plan_assignments)")
        assert row is not None  # an aggregate query yields one row
        return tuple(int(value or 0) for value in row)

    async def late_since(self, probes: Sequence[LateProbe]) -> dict[str, int]:
        columns = _probe_columns(probes)
        found: dict[str, int] = {row[0]: row[1]
                                 for row in await self._conn.fetch(_LATE_INDEXED, *columns)}
        recent = [p for p in probes if p.after_ms - LATE_LAG_MS < p.before_ms]
        if recent:
            names = sorted({m.event_name for m in self._meters.values()})
            for customer_id, ts in await self._conn.fetch(_LATE_RECENT,
                                                          *_probe_columns(recent), names):
                found[customer_id] = min(ts, found.get(customer_id, ts))
        return found

    async def final_records(self, customer_id: str, ending_after_ms: int) -> list[StoredStatement]:
        rows = await self._conn.fetch(
            f"SELECT {STORED_COLUMNS} FROM statements WHERE customer_id = $1"
            " AND status = 'final' AND period_end_ms > $2 ORDER BY period_start_ms",
            customer_id, ending_after_ms,
        )
        return [stored_from_row(row) for row in rows]

    async def statement_at(self, customer_id: str, at_ms: int) -> StoredStatement | None:
        row = await self._conn.fetchrow(
            f"SELECT {STORED_COLUMNS} FROM statements WHERE customer_id = $1"
            " AND period_start_ms <= $2 ORDER BY period_start_ms DESC LIMIT 1",
            customer_id, at_ms,
        )
        found = None if row is None else stored_from_row(row)
        return found if found is not None and at_ms < found.head.period.end_ms else None

    async def quantities(
        self, meters: Sequence[str], customers: Sequence[str], period: Period
    ) -> dict[str, dict[str, Decimal]]:
        kinds = {name: self._meter(name) for name in meters}
        rows: dict[str, list[Sequence[Any]]] = {name: [] for name in meters}
        plan = sealed_plan(plan_read(period.start_ms, period.end_ms, self._bucket_ms),
                           await self._sealed_until())
        ids = list(customers)
        if plan.buckets is not None:
            first, end = plan.buckets
            rollup_start, rollup_end = plan.rollups or (end, end)  # no rollup: none read
            bounds = (first, end, rollup_start, rollup_end, self._bucket_ms * ROLLUP_BUCKETS,
                      self._bucket_ms)
            for names, sql in _merges(kinds):
                for row in await self._conn.fetch(sql, names, ids, *bounds):
                    rows[row[0]].append(row[1:])
        for start, end in plan.raw:  # the unaligned edges, from the raw events
            for name, meter in kinds.items():
                raw = await self._conn.fetch(_RAW_EDGE, ids, meter.event_name, start, end)
                rows[name].extend((c, agg.count, agg.value, agg.last_ts, agg.last_seq)
                                  for c, agg in fold_by_customer(meter, raw).items())
        return {name: {c: from_numeric(q) for c, q in reduce_rows(kinds[name].aggregation,
                                                                   rows[name]).items()}
                for name in meters}

    async def _sealed_until(self) -> int:
        """The end of the days whose rollup rows exist (pg_rollups.py)."""
        if self._rollups_until is None:
            self._rollups_until = int(
                await self._conn.fetchval("SELECT rollups_until FROM ingest_counter"))
        return self._rollups_until

    def _meter(self, name: str) -> Meter:
        try:
            return self._meters[name]
        except KeyError:
            raise KeyError(f"unknown meter {name!r}") from None


def _merges(kinds: Mapping[str, Meter]) -> list[tuple[list[str], str]]:
    """(meters, query) pairs reading `kinds` merged per customer: count and sum meters in
    one query (sums), max meters and last meters in one query each."""
    groups: dict[str, tuple[str, str]] = {
        "count": (MERGED_VALUE["sum"], "0, 0"), "sum": (MERGED_VALUE["sum"], "0, 0"),
        "max": (MERGED_VALUE["max"], "0, 0"), "last": (MERGED_VALUE["last"], MERGED_LAST),
    }
    by_query: dict[tuple[str, str], list[str]] = {}
    for name, meter in kinds.items():
        by_query.setdefault(groups[meter.aggregation], []).append(name)
    return [(names, _PLANNED_AGGREGATES.format(value=value, last=last))
            for (value, last), names in by_query.items()]


def fold_by_customer(meter: Meter, rows: Iterable[Row]) -> dict[str, Aggregate]:
    """The meter's fold of raw (customer_id, seq, timestamp, metadata) rows per customer;
    customers none of whose events count are absent."""
    by_customer: dict[str, list[Sequence[Any]]] = {}
    for row in rows:
        by_customer.setdefault(row[0], []).append(row[1:])
    folded = {c: fold_rows(meter, customer_rows) for c, customer_rows in by_customer.items()}
    return {c: agg for c, agg in folded.items() if agg is not None}


def _burn(row: Row) -> Burn:
    status: StatementStatus = row[2]
    return Burn(row[1], status, row[3], Decimal(row[4]))


def _probe_columns(probes: Sequence[LateProbe]) -> tuple[list[str], list[int], list[int]]:
    """The probes as three parallel arrays, for unnest()."""
    return ([p.customer_id for p in probes], [p.after_ms for p in probes],
            [p.before_ms for p in probes])


def _grouped(pairs: Iterable[tuple[str, T]]) -> dict[str, list[T]]:
    groups: dict[str, list[T]] = {}
    for key, value in pairs:
        groups.setdefault(key, []).append(value)
    return groups
