"""Bulk merges of aggregate deltas into the PostgreSQL store's aggregate rows.

An append touches a few thousand rows (every customer's bucket and rollup of every meter).
The deltas travel by binary COPY into a per-session temporary table, and one statement moves
them into `meter_aggregates`, merging each with the stored row server side (`INSERT ... ON
CONFLICT DO UPDATE`): no round trip reads the stored rows first. The SQL merge is
`billing.meters.merge` written out per aggregation type, ties included, so that a quantity
never depends on the order or grouping of the events (see `_MERGE`).

asyncpg encodes array parameters element by element through isinstance checks of abstract
base classes, which made array parameters of thousands of rows cost more than the statement;
COPY avoids that. Values travel as their exact text, cast to NUMERIC by the merge: asyncpg's
binary NUMERIC encoding cost ~1.2 us a row more than a text column (what str() gives is exact,
and NUMERIC reads it to the same value and scale). The temporary table is created once per
connection (`prepare_connection`, the pool's init) and emptied by the merge that reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from billing.meters import Aggregate, AggregationType, Number
from billing.store.pg_connection import Connection, Row

# (meter, customer_id, bucket_start_ms, size_ms, count, value, last_ts_ms, last_seq); the
# value as its exact text (`value_text`)
DeltaRow = tuple[str, str, int, int, int, str, int, int]

_COLUMNS = "meter, customer_id, bucket_start_ms, size_ms, count, value, last_ts_ms, last_seq"
_TEMP_TABLE = """
    CREATE TEMPORARY TABLE aggregate_deltas (
        meter text, customer_id text, bucket_start_ms bigint, size_ms bigint,
        count bigint, value text, last_ts_ms bigint, last_seq bigint
    ) ON COMMIT DELETE ROWS"""


def _total_greater(x: str, y: str) -> str:
    """SQL for `Decimal(x).compare_total(Decimal(y)) > 0` on NUMERIC: by value, then equal
    values by exponent as Python orders them (2 > 2.0, but -2.0 > -2)."""
    return (f"({x} > {y} OR ({x} = {y} AND CASE WHEN {x} >= 0 THEN scale({x}) < scale({y})"
            f" ELSE scale({x}) > scale({y}) END))")


# The delta (excluded) holds the later event: by (timestamp, seq), a full tie by value.
_LATER = (f"((excluded.last_ts_ms, excluded.last_seq) > (a.last_ts_ms, a.last_seq)"
          f" OR ((excluded.last_ts_ms, excluded.last_seq) = (a.last_ts_ms, a.last_seq)"
          f" AND {_total_greater('excluded.value', 'a.value')}))")
# $1, $2, $3: the names of the sum, max and last meters; every other meter counts.
_MERGE = f"""
    WITH d AS (DELETE FROM aggregate_deltas RETURNING {_COLUMNS})
    INSERT INTO meter_aggregates AS a ({_COLUMNS})
    SELECT meter, customer_id, bucket_start_ms, size_ms, count, value::numeric, last_ts_ms,
        last_seq FROM d
    ON CONFLICT (meter, customer_id, bucket_start_ms, size_ms) DO UPDATE SET
        count = a.count + excluded.count,
        value = CASE
            WHEN a.meter = ANY($1::text[]) THEN a.value + excluded.value
            WHEN a.meter = ANY($2::text[]) THEN
                CASE WHEN {_total_greater('excluded.value', 'a.value')}
                     THEN excluded.value ELSE a.value END
            WHEN a.meter = ANY($3::text[]) THEN
                CASE WHEN {_LATER} THEN excluded.value ELSE a.value END
            ELSE a.count + excluded.count END,
        last_ts_ms = CASE WHEN {_LATER} THEN excluded.last_ts_ms ELSE a.last_ts_ms END,
        last_seq = CASE WHEN {_LATER} THEN excluded.last_seq ELSE a.last_seq END"""


# The merge of many rows in one GROUP BY (a day's buckets into its rollup, a period's rows into
# its quantity), per aggregation type: the value, then the latest (timestamp, seq) of the
# group. The later row sorts first: by (timestamp, seq), then by value as compare_total.
_SCALE_ORDER = "CASE WHEN value >= 0 THEN scale(value) ELSE -scale(value) END"
_LATER_FIRST = f"last_ts_ms DESC, last_seq DESC, value DESC, {_SCALE_ORDER}"
MERGED_VALUE: dict[AggregationType, str] = {
    "count": "sum(count)",
    "sum": "sum(value)",
    "max": f"(array_agg(value ORDER BY value DESC, {_SCALE_ORDER}))[1]",
    "last": f"(array_agg(value ORDER BY {_LATER_FIRST}))[1]",
}
MERGED_LAST = (f"(array_agg(last_ts_ms ORDER BY {_LATER_FIRST}))[1],"
               f" (array_agg(last_seq ORDER BY {_LATER_FIRST}))[1]")


def value_text(value: Number) -> str:
    """A delta's value as the text NUMERIC reads exactly (str of an int or a Decimal)."""
    return str(value)


async def prepare_connection(conn: Connection) -> None:
    """Create this session's temporary table (run once per new pooled connection)."""
    await conn.execute(_TEMP_TABLE)


async def merge_rows(
    conn: Connection, deltas: Sequence[DeltaRow], kinds: Mapping[str, AggregationType]
) -> None:
    """Merge `deltas` (one per row key; a count's value is its count) into the stored rows,
    creating missing ones; `kinds` gives each meter's aggregation. Call inside the
    transaction that stamps their events."""
    if deltas:
        await stage_rows(conn, deltas)
        await merge_staged(conn, kinds)


async def stage_rows(conn: Connection, deltas: Sequence[DeltaRow]) -> None:
    """`merge_rows`' first half: send the deltas to the session's table of deltas."""
    await conn.copy_records_to_table("aggregate_deltas", records=deltas)


async def merge_staged(conn: Connection, kinds: Mapping[str, AggregationType]) -> None:
    """`merge_rows`' second half: merge the staged deltas (and empty their table)."""
    named = {kind: [name for name, k in kinds.items() if k == kind]
             for kind in ("sum", "max", "last")}
    await conn.execute(_MERGE, named["sum"], named["max"], named["last"])


def aggregate(row: Row) -> Aggregate:
    """An Aggregate from (count, value, last_ts_ms, last_seq) columns; value is a NUMERIC."""
    return Aggregate(int(row[0]), from_numeric(row[1]), int(row[2]), int(row[3]))


def from_numeric(value: Decimal) -> Decimal:
    """A NUMERIC as asyncpg decoded it, in PostgreSQL's own notation. asyncpg gives an integer
    ending in zero base-10000 digits an exponent (12500000000 comes back as 1.25E+10), which
    NUMERIC never has; a statement must show what SQLite shows for the same integer."""
    exponent = value.as_tuple().exponent
    return Decimal(int(value)) if isinstance(exponent, int) and exponent > 0 else value

