"""The SQLite engine's writes of events and aggregates, as synchronous functions that run on
the writer connection's thread inside one transaction (`SqliteFile._write`).

A whole append is one trip to that thread instead of one per statement, and its per-event
Python work (encoding metadata, folding) runs there, not on the event loop between awaits.
SQLite merges the aggregate rows itself (`INSERT ... ON CONFLICT DO UPDATE`), so no row is
read back before it is written: counts, `last` and sums and maxima of integers in SQL, other
decimals through the exact functions `register_functions` adds to the connection.

Rollup rows exist only for sealed days (billing/store/base.py): an append merges its deltas
into bucket rows, and into rollup rows only for buckets of days its meter sealed already
(late events). `seal` writes a day's rollup rows once, from its bucket rows, with the same
merge: what reads get is the same whichever rows they take.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from decimal import Decimal

from billing.events import UsageEvent
from billing.meters import AggregationType, Meter
from billing.money import EXACT
from billing.store.base import (
    NOTHING_SEALED,
    ROLLUP_BUCKETS,
    AggregateDeltas,
    AppendResult,
    BatchFold,
    decode_metadata,
    encode_metadata,
)
from billing.store.epochs import SQLITE_EPOCH_BITS, epoch_ranges

REBUILD_BATCH = 10_000  # raw events read per query while rebuilding: bounds memory

EVENT_COLUMNS = (
    "seq, event_id, customer_id, event_name, timestamp_ms, metadata, source, ingested_at_ms"
)
INSERT_CUSTOMER = (
    "INSERT INTO customers (id, created_at_ms) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"
)
_INSERT_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
# The largest ingested_at (NULL: no events): the last event's, as ingested_at never
# decreases along seq (migration 0004); a seek on the rowid.
WATERMARK = ("SELECT (SELECT ingested_at_ms FROM events"
             " WHERE seq = (SELECT MAX(seq) FROM events))")
# Widen an epoch's timestamp range to the events an append stored in it (epochs.py).
_WIDEN_EPOCH = """
    INSERT INTO event_epochs (epoch, min_ts_ms, max_ts_ms) VALUES (?, ?, ?)
    ON CONFLICT (epoch) DO UPDATE SET min_ts_ms = min(min_ts_ms, excluded.min_ts_ms),
                                      max_ts_ms = max(max_ts_ms, excluded.max_ts_ms)"""
_KNOWN_IDS = "SELECT event_id FROM events WHERE event_id IN (SELECT value FROM json_each(?))"
_REBUILD_SCAN = """
    SELECT seq, customer_id, timestamp_ms, metadata FROM events
    WHERE seq > ? AND event_name = ? ORDER BY seq LIMIT ?"""

# Decimal text that is an integer of at most 62 bits: two of them add up without overflow
# (SQLite would turn an overflowing sum into a float). Canonical text only, so "-0", "1E+3"
# and "5.0" keep their exponent through the exact path.
_SMALL_INT = ("(CAST({0} AS INTEGER) BETWEEN -4611686018427387903 AND 4611686018427387903"
              " AND CAST(CAST({0} AS INTEGER) AS TEXT) = {0})")
_BOTH_SMALL = f"{_SMALL_INT.format('value')} AND {_SMALL_INT.format('excluded.value')}"
_NEWER = "(excluded.last_ts_ms, excluded.last_seq) > (last_ts_ms, last_seq)"
# The stored row merged with a delta row, as `merge` does it. A full (timestamp, seq) tie
# cannot occur: seq is unique, so `last` needs no tie-break by value here.
_MERGED_VALUE: dict[AggregationType, str] = {
    "count": "count + excluded.count",
    "sum": f"""CASE WHEN {_BOTH_SMALL}
               THEN CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER)
               ELSE mp_exact_sum(value, excluded.value) END""",
    "max": f"""CASE WHEN {_BOTH_SMALL}
               THEN max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))
               ELSE mp_exact_max(value, excluded.value) END""",
    "last": f"CASE WHEN {_NEWER} THEN excluded.value ELSE value END",
}
_INSERT_ROWS = """
    INSERT INTO meter_aggregates (meter, customer_id, bucket_start_ms, size_ms, count, value,
                                  last_ts_ms, last_seq)"""
_MERGE_ON_CONFLICT = """
    ON CONFLICT (meter, customer_id, bucket_start_ms, size_ms) DO UPDATE SET
        count = count + excluded.count,
        value = {value},
        last_ts_ms = CASE WHEN {newer} THEN excluded.last_ts_ms ELSE last_ts_ms END,
        last_seq = CASE WHEN {newer} THEN excluded.last_seq ELSE last_seq END"""
_MERGES = {kind: _MERGE_ON_CONFLICT.format(value=value, newer=_NEWER)
           for kind, value in _MERGED_VALUE.items()}
_UPSERTS = {kind: f"{_INSERT_ROWS} VALUES (?, ?, ?, ?, ?, ?, ?, ?) {merge}"
            for kind, merge in _MERGES.items()}
# A meter's rollup rows of the days in [:since, :until), from its bucket rows, each merged in
# as an append merges a delta. The day floors a negative start too (SQLite's % truncates).
_DAY = "bucket_start_ms - ((bucket_start_ms % :rollup_ms) + :rollup_ms) % :rollup_ms"
_SEALS = {kind: f"""{_INSERT_ROWS}
    SELECT meter, customer_id, {_DAY}, :rollup_ms, count, value, last_ts_ms, last_seq
    FROM meter_aggregates
    WHERE meter = :meter AND size_ms = :bucket_ms
        AND bucket_start_ms >= :since AND bucket_start_ms < :until {merge}"""
    for kind, merge in _MERGES.items()}


def register_functions(conn: sqlite3.Connection) -> None:
    """Add the exact decimal functions the aggregate upserts call to the connection."""
    conn.create_function("mp_exact_sum", 2, _exact_sum, deterministic=True)
    conn.create_function("mp_exact_max", 2, _exact_max, deterministic=True)


def _exact_sum(a: str, b: str) -> str:
    return str(EXACT.add(Decimal(a), Decimal(b)))


def _exact_max(a: str, b: str) -> str:
    return str(EXACT.max(Decimal(a), Decimal(b)))


def append(
    conn: sqlite3.Connection, batch: BatchFold, events: Sequence[UsageEvent], now_ms: int,
    known_customers: AbstractSet[str],
) -> tuple[AppendResult, list[str]]:
    """`Store.append` inside the caller's transaction, and the customers of the events stored;
    `batch` (empty) collects the deltas. `known_customers` are stored already: not inserted."""
    firsts: dict[str, int] = {}
    for index, event in enumerate(events):
        firsts.setdefault(event.event_id, index)  # the first of a batch's duplicates wins
    stored = [False] * len(events)
    previous = _scalar(conn, WATERMARK)
    watermark = max(now_ms, previous + 1)
    fresh, inserted = _insert_fresh(conn, events, firsts, watermark, known_customers)
    if not fresh:
        return AppendResult(tuple(stored), {}, previous), []
    batch.add_all(inserted.events, inserted.first_seq)
    merge(conn, batch, sealed_marks(conn))
    for index in fresh:
        stored[index] = True
    deltas = AggregateDeltas(previous, watermark, batch.bucket_ms, batch.cells)
    return AppendResult(tuple(stored), dict(batch.skipped), watermark, deltas), inserted.customers


def _insert_fresh(
    conn: sqlite3.Connection, events: Sequence[UsageEvent], firsts: Mapping[str, int],
    ingested_at_ms: int, known_customers: AbstractSet[str],
) -> tuple[list[int], _Inserted]:
    """Insert the events of `firsts` (id -> index) not stored yet; their indexes, and what
    `_insert` did. Tries them all first: proxy events are never stored already and ingested
    ones seldom, so the ids are probed only after the unique index refused one (the
    savepoint undoes the rows inserted before it)."""
    fresh = list(firsts.values())
    conn.execute("SAVEPOINT fresh")
    try:
        inserted = _insert(conn, [events[i] for i in fresh], ingested_at_ms, known_customers)
    except sqlite3.IntegrityError:
        conn.execute("ROLLBACK TO fresh")
        conn.execute("RELEASE fresh")
        known = {row[0] for row in conn.execute(_KNOWN_IDS, (json.dumps(list(firsts)),))}
        if not known:
            raise  # not a stored event_id: some other constraint refused the batch
        fresh = [index for event_id, index in firsts.items() if event_id not in known]
        if not fresh:
            return [], _Inserted(0, [], [])
        return fresh, _insert(conn, [events[i] for i in fresh], ingested_at_ms, known_customers)
    conn.execute("RELEASE fresh")
    return fresh, inserted


def sealed_marks(conn: sqlite3.Connection) -> dict[str, int]:
    """Each built meter's `rollups_until`: the end of its last sealed day."""
    return dict(conn.execute("SELECT meter, rollups_until FROM meter_state").fetchall())


@dataclass(frozen=True)
class _Inserted:
    first_seq: int  # the seq of the first event inserted
    events: list[UsageEvent]  # the events inserted, in seq order
    customers: list[str]  # the events' customers


def _insert(
    conn: sqlite3.Connection, events: list[UsageEvent], ingested_at_ms: int,
    known_customers: AbstractSet[str],
) -> _Inserted:
    """Insert new events, and their customers but the known ones. Raises IntegrityError
    when an event_id is stored already (some rows may be in: the caller's savepoint)."""
    first_seq = _scalar(conn, "SELECT MAX(seq) FROM events") + 1
    rows = []
    # A new customer exists from its earliest event, so its first period covers it.
    created: dict[str, int] = {}
    for seq, e in enumerate(events, first_seq):
        customer_id, ts_ms = e.customer_id, e.timestamp_ms
        rows.append((seq, e.event_id, customer_id, e.event_name, ts_ms,
                     encode_metadata(e.metadata), e.source, ingested_at_ms))
        created[customer_id] = min(created.get(customer_id, ingested_at_ms), ts_ms)
    conn.executemany(_INSERT_EVENT, rows)
    conn.executemany(_WIDEN_EPOCH, epoch_ranges(first_seq, events, SQLITE_EPOCH_BITS))
    conn.executemany(INSERT_CUSTOMER, [(customer_id, first) for customer_id, first
                                       in created.items() if customer_id not in known_customers])
    return _Inserted(first_seq, events, list(created))


def merge(conn: sqlite3.Connection, batch: BatchFold, sealed: Mapping[str, int]) -> None:
    """Merge the batch's deltas into their bucket rows, one upsert per row, and into the
    rollup rows of the buckets in sealed days (before `sealed[meter]`: late events)."""
    bucket_ms = batch.bucket_ms
    rollup_ms = bucket_ms * ROLLUP_BUCKETS
    for name, tallies in batch.tallies.items():
        kind = batch.kinds[name]
        until = sealed.get(name, NOTHING_SEALED)
        rows = []
        for (customer_id, start), tally in tallies.items():
            value = str(tally.count if kind == "count" else tally.value)
            count, last_ts, last_seq = tally.count, tally.last_ts, tally.last_seq
            rows.append((name, customer_id, start, bucket_ms, count, value, last_ts, last_seq))
            if start < until:
                rows.append((name, customer_id, start - start % rollup_ms, rollup_ms, count,
                             value, last_ts, last_seq))
        if rows:
            conn.executemany(_UPSERTS[kind], rows)


def seal(conn: sqlite3.Connection, meter: str, kind: AggregationType, bucket_ms: int,
         until_ms: int) -> bool:
    """Seal the meter's days up to `until_ms` inside the caller's transaction: write their
    rollup rows from their bucket rows and move its `rollups_until` there. False (nothing
    done) when they are sealed already or the meter has no aggregates built."""
    row = conn.execute("SELECT rollups_until FROM meter_state WHERE meter = ?",
                       (meter,)).fetchone()
    if row is None or row[0] >= until_ms:
        return False
    conn.execute(_SEALS[kind], {"meter": meter, "bucket_ms": bucket_ms, "since": row[0],
                                "until": until_ms, "rollup_ms": bucket_ms * ROLLUP_BUCKETS})
    conn.execute("UPDATE meter_state SET rollups_until = ? WHERE meter = ?", (until_ms, meter))
    return True


def rebuild(conn: sqlite3.Connection, meter: Meter, bucket_ms: int,
            state: tuple[str, str, int, int, int]) -> None:
    """Recompute one meter's aggregates from the raw events (read `REBUILD_BATCH` at a time)
    and record `state`, its meter_state row but the mark, inside the caller's transaction.
    The days sealed before stay sealed (with the same bucket size; none with another)."""
    was = conn.execute("SELECT bucket_ms, rollups_until FROM meter_state WHERE meter = ?",
                       (meter.name,)).fetchone()
    until = was[1] if was is not None and was[0] == bucket_ms else NOTHING_SEALED
    conn.execute("DELETE FROM meter_aggregates WHERE meter = ?", (meter.name,))
    after = 0
    while rows := conn.execute(_REBUILD_SCAN, (after, meter.event_name, REBUILD_BATCH)).fetchall():
        batch = BatchFold((meter,), bucket_ms)
        for seq, customer_id, ts_ms, metadata in rows:
            batch.add(customer_id, meter.event_name, ts_ms, seq, decode_metadata(metadata))
        merge(conn, batch, {meter.name: until})
        after = rows[-1][0]
    conn.execute("INSERT OR REPLACE INTO meter_state (meter, fingerprint, bucket_ms, rollup_ms,"
                 " built_at_ms, rollups_until) VALUES (?, ?, ?, ?, ?, ?)", (*state, until))


def _scalar(conn: sqlite3.Connection, sql: str) -> int:
    """The integer the query yields (a seek: MAX of the rowid, the last row by it); 0 for
    NULL."""
    return int(conn.execute(sql).fetchone()[0] or 0)
