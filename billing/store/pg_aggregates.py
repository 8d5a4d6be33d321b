"""Bulk reads and writes of aggregate rows in the PostgreSQL store.

An append touches a few thousand rows (every customer's bucket and rollup of every meter).
The rows travel by binary COPY into per-session temporary tables, then one join reads or
writes them all: asyncpg encodes array parameters element by element through isinstance
checks of abstract base classes, which made array parameters cost more than the statements.
The temporary tables are created once per connection (`prepare_connection`, the pool's init),
emptied when a merge starts and by every commit.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from billing.meters import Aggregate
from billing.store.pg_connection import Connection, Row

AggregateRowKey = tuple[str, str, int, int]  # (meter, customer_id, bucket_start_ms, size_ms)

_KEY = "meter, customer_id, bucket_start_ms, size_ms"
_VALUES = "count, value, last_ts_ms, last_seq"
_TEMP_TABLES = """
    CREATE TEMPORARY TABLE touched_aggregates (
        meter text, customer_id text, bucket_start_ms bigint, size_ms bigint
    ) ON COMMIT DELETE ROWS;
    CREATE TEMPORARY TABLE merged_aggregates (
        meter text, customer_id text, bucket_start_ms bigint, size_ms bigint,
        count bigint, value numeric, last_ts_ms bigint, last_seq bigint, stored boolean
    ) ON COMMIT DELETE ROWS;"""
# Each touched row is one primary-key probe, so both joins below must be nested loops over
# the temporary table. The planner misjudges young tables (no statistics until autovacuum
# analyses them) and would hash all of meter_aggregates instead, a cost that grows with the
# table; the SET LOCALs last until the transaction ends. A rebuild merges several times in
# one transaction, so each merge starts from empty temporary tables. The joins also take the
# touched meters as a parameter: a statement without parameters is planned once and that plan
# reused however the table grows; with one, the pool's plan_cache_mode plans each execution.
_START_MERGE = """
    SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off;
    DELETE FROM touched_aggregates; DELETE FROM merged_aggregates"""
_TOUCHED = f"""
    SELECT {_KEY}, {_VALUES} FROM touched_aggregates JOIN meter_aggregates USING ({_KEY})
    WHERE meter = ANY($1::text[])"""
_UPDATE = """
    UPDATE meter_aggregates AS a SET count = m.count, value = m.value,
        last_ts_ms = m.last_ts_ms, last_seq = m.last_seq
    FROM merged_aggregates AS m
    WHERE m.stored AND a.meter = ANY($1::text[])
        AND (a.meter, a.customer_id, a.bucket_start_ms, a.size_ms)
        = (m.meter, m.customer_id, m.bucket_start_ms, m.size_ms)"""
_INSERT = f"""
    INSERT INTO meter_aggregates ({_KEY}, {_VALUES})
    SELECT {_KEY}, {_VALUES} FROM merged_aggregates WHERE NOT stored"""


async def prepare_connection(conn: Connection) -> None:
    """Create this session's temporary tables (run once per new pooled connection)."""
    await conn.execute(_TEMP_TABLES)


async def stored_rows(
    conn: Connection, keys: Collection[AggregateRowKey]
) -> dict[AggregateRowKey, Aggregate]:
    """The stored aggregate rows among `keys`; absent keys have no row. Call inside the
    transaction that will write them."""
    await conn.execute(_START_MERGE)
    await conn.copy_records_to_table("touched_aggregates", records=keys)
    rows = await conn.fetch(_TOUCHED, _meters(keys))
    return {(row[0], row[1], row[2], row[3]): aggregate(row[4:]) for row in rows}


async def write_rows(
    conn: Connection, rows: Mapping[AggregateRowKey, Aggregate], stored: Iterable[AggregateRowKey]
) -> None:
    """Write `rows`: update those whose key is in `stored`, insert the others. Call after
    `stored_rows`, in the same transaction."""
    existing = set(stored)
    await conn.copy_records_to_table("merged_aggregates", records=(
        (*key, agg.count, agg.value, agg.last_ts, agg.last_seq, key in existing)
        for key, agg in rows.items()
    ))
    if existing:
        await conn.execute(_UPDATE, _meters(existing))
    if len(existing) < len(rows):
        await conn.execute(_INSERT)


def _meters(keys: Iterable[AggregateRowKey]) -> list[str]:
    return sorted({key[0] for key in keys})


def aggregate(row: Row) -> Aggregate:
    """An Aggregate from (count, value, last_ts_ms, last_seq) columns; value is a Decimal."""
    return Aggregate(int(row[0]), row[1], int(row[2]), int(row[3]))
