"""The embedded SQLite engine of `Store` (aiosqlite, WAL).

Durability: `synchronous=FULL`, so a committed transaction survives a power cut. In WAL mode
NORMAL only protects against a crash of the process and may lose the last commits when the
machine loses power, which would break "200 only once durable"; group commit pays the fsync
once per flush, not once per event.

Concurrency: writes go through one connection, one transaction at a time (an asyncio lock);
reads use two more connections, one of them for billing (billing/store/sqlite_conn.py; each
aiosqlite connection has its own thread), which WAL lets read a consistent snapshot while the
writer commits. Another process (`meterproxy rebuild`) may open the same file: `busy_timeout`
makes it wait for the write lock instead of failing.

The billing tables (plan history, credits, statements) are `SqliteLedger`'s, a base class.
The file must be a real path: ":memory:" would give the connections separate databases.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import aiosqlite

from billing.events import Source, StoredEvent, UsageEvent, now_ms
from billing.meters import Aggregate, Meter, merge
from billing.store.base import (
    ROLLUP_BUCKETS,
    ApiKey,
    AppendResult,
    BatchFold,
    Customer,
    DuplicateKey,
    ReadPlan,
    StoreError,
    decode_metadata,
    encode_metadata,
    fold_rows,
    merged,
    plan_read,
    with_rollups,
)
from billing.store.migrate import migrate
from billing.store.sqlite_conn import aggregate_row as _aggregate
from billing.store.sqlite_conn import scalar as _scalar
from billing.store.sqlite_ledger import SqliteLedger

_log = logging.getLogger(__name__)

_REBUILD_BATCH = 10_000  # raw events read per query while rebuilding: bounds memory

_EVENT_COLUMNS = (
    "seq, event_id, customer_id, event_name, timestamp_ms, metadata, source, ingested_at_ms"
)
_INSERT_EVENT = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_KNOWN_IDS = "SELECT event_id FROM events WHERE event_id IN (SELECT value FROM json_each(?))"
_INSERT_CUSTOMER = (
    "INSERT INTO customers (id, created_at_ms) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"
)
_CUSTOMER_COLUMNS = "id, created_at_ms, plan, deleted_at_ms"
_AGGREGATE_COLUMNS = "count, value, last_ts_ms, last_seq"
# CROSS JOIN pins the plan: one primary-key probe per touched key.
_TOUCHED_AGGREGATES = """
    SELECT a.customer_id, a.bucket_start_ms, a.size_ms,
           a.count, a.value, a.last_ts_ms, a.last_seq
    FROM json_each(?) AS k CROSS JOIN meter_aggregates AS a
    ON a.meter = ? AND a.customer_id = k.value ->> 0
       AND a.bucket_start_ms = k.value ->> 1 AND a.size_ms = k.value ->> 2"""
_UPSERT_AGGREGATE = """
    INSERT INTO meter_aggregates (meter, customer_id, bucket_start_ms, size_ms, count, value,
                                  last_ts_ms, last_seq)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (meter, customer_id, bucket_start_ms, size_ms) DO UPDATE SET
        count = excluded.count, value = excluded.value,
        last_ts_ms = excluded.last_ts_ms, last_seq = excluded.last_seq"""
# Rows of a ReadPlan: rollups within [rollup start, rollup end), buckets elsewhere in range.
_PLANNED_ROWS = """
    bucket_start_ms >= :start AND bucket_start_ms < :end AND size_ms =
        CASE WHEN bucket_start_ms >= :rollup_start AND bucket_start_ms < :rollup_end
             THEN :rollup_ms ELSE :bucket_ms END"""
_CUSTOMER_AGGREGATES = f"""
    SELECT {_AGGREGATE_COLUMNS} FROM meter_aggregates
    WHERE meter = :meter AND customer_id = :customer_id AND {_PLANNED_ROWS}"""
_ALL_CUSTOMER_AGGREGATES = f"""
    SELECT customer_id, {_AGGREGATE_COLUMNS} FROM meter_aggregates
    WHERE meter = :meter AND {_PLANNED_ROWS}"""
_RAW_RANGE = """
    SELECT seq, timestamp_ms, metadata FROM events
    WHERE customer_id = ? AND event_name = ? AND timestamp_ms >= ? AND timestamp_ms < ?"""
_REBUILD_SCAN = """
    SELECT seq, customer_id, timestamp_ms, metadata FROM events
    WHERE seq > ? AND event_name = ? ORDER BY seq LIMIT ?"""


class SqliteStore(SqliteLedger):
    """`LedgerStore` on one SQLite file; see the module docstring for durability and
    concurrency. The billing tables' methods come from `SqliteLedger`.

    `meters` are the configured meters; `bucket_ms` the aggregate bucket size (periods are
    read from whole buckets plus raw events at unaligned edges). `clock` (wall time in ms)
    is read only to stamp applied migrations and rebuilt meters.
    """

    def __init__(
        self,
        path: str,
        meters: Sequence[Meter],
        bucket_ms: int,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        if bucket_ms <= 0:
            raise ValueError(f"bucket_ms must be positive, got {bucket_ms}")
        super().__init__(path)
        self._meters = {meter.name: meter for meter in meters}
        self._bucket_ms = bucket_ms
        self._clock = clock

    # ----------------------------------------------------------------- lifecycle

    async def open(self, *, rebuild_all: bool = False) -> None:
        """Open the file (creating it), migrate the schema, rebuild changed meters' aggregates
        (every meter's with `rebuild_all`: `meterproxy rebuild`).

        Raises StoreError when the file cannot be opened or migrated, or holds a schema
        newer than this version knows.
        """
        try:
            await migrate(await self._open_writer(), self._clock())
            await self._open_readers()
            await self._sync_meters(rebuild_all)
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"{self._path}: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    # -------------------------------------------------------------------- events

    async def append(self, events: Sequence[UsageEvent], now_ms: int) -> AppendResult:
        """See `Store.append`. Raises StoreError (nothing stored) when the write fails."""
        firsts: dict[str, int] = {}
        for index, event in enumerate(events):
            firsts.setdefault(event.event_id, index)  # the first of a batch's duplicates wins
        stored = [False] * len(events)
        async with self._transaction() as conn:
            known = await _known_ids(conn, list(firsts))
            fresh = [index for event_id, index in firsts.items() if event_id not in known]
            watermark = await _scalar(conn, "SELECT MAX(ingested_at_ms) FROM events")
            if not fresh:
                return AppendResult(tuple(stored), {}, watermark)
            watermark = max(now_ms, watermark + 1)
            batch = await self._insert(conn, [events[i] for i in fresh], watermark)
            await self._merge_deltas(conn, batch.deltas)
        for index in fresh:
            stored[index] = True
        return AppendResult(tuple(stored), dict(batch.skipped), watermark)

    async def _insert(
        self, conn: aiosqlite.Connection, events: list[UsageEvent], ingested_at_ms: int
    ) -> BatchFold:
        """Insert new events (and their unknown customers); return their aggregate deltas."""
        first_seq = await _scalar(conn, "SELECT MAX(seq) FROM events") + 1
        batch = BatchFold(self._meters.values(), self._bucket_ms)
        rows = []
        # A new customer exists from its earliest event, so its first period covers it.
        created: dict[str, int] = {}
        for seq, e in enumerate(events, first_seq):
            rows.append((seq, e.event_id, e.customer_id, e.event_name, e.timestamp_ms,
                         encode_metadata(e.metadata), e.source, ingested_at_ms))
            created[e.customer_id] = min(created.get(e.customer_id, ingested_at_ms),
                                         e.timestamp_ms)
            batch.add(e.customer_id, e.event_name, e.timestamp_ms, seq, e.metadata)
        await conn.executemany(_INSERT_EVENT, rows)
        await conn.executemany(_INSERT_CUSTOMER, created.items())
        return batch

    async def get_event(self, event_id: str) -> StoredEvent | None:
        """See `Store.get_event`."""
        rows = await self._read(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE event_id = ?", (event_id,)
        )
        return next((_stored_event(row) for row in rows), None)

    async def list_events(
        self,
        *,
        customer_id: str | None = None,
        event_names: Sequence[str] | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int,
        offset: int = 0,
    ) -> list[StoredEvent]:
        """See `Store.list_events`."""
        if event_names is not None and not event_names:
            return []
        conditions = {
            "customer_id = ?": customer_id,
            "event_name IN (SELECT value FROM json_each(?))":
                None if event_names is None else json.dumps(list(event_names)),
            "timestamp_ms >= ?": start_ms,
            "timestamp_ms < ?": end_ms,
        }
        used = {sql: value for sql, value in conditions.items() if value is not None}
        where = " AND ".join(used) or "1"
        rows = await self._read(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE {where}"
            " ORDER BY timestamp_ms DESC, seq DESC LIMIT ? OFFSET ?",
            (*used.values(), limit, offset),
        )
        return [_stored_event(row) for row in rows]

    async def watermark(self) -> int:
        """See `Store.watermark`."""
        rows = await self._read("SELECT MAX(ingested_at_ms) FROM events")
        return next(iter(rows))[0] or 0

    # ---------------------------------------------------------------- aggregates

    async def meter_aggregate(
        self, meter_name: str, customer_id: str, start_ms: int, end_ms: int
    ) -> Aggregate | None:
        """See `Store.meter_aggregate`: rollup and bucket rows from the aggregate table, the
        partial buckets at unaligned edges from the raw events of that sub-range, all from
        one snapshot."""
        meter = self._meter(meter_name)
        plan = plan_read(start_ms, end_ms, self._bucket_ms)
        total: Aggregate | None = None
        async with self._snapshot() as conn:
            if plan.buckets is not None:
                named = self._plan_params(plan) | {"meter": meter.name, "customer_id": customer_id}
                for row in await conn.execute_fetchall(_CUSTOMER_AGGREGATES, named):
                    total = merge(meter.aggregation, total, _aggregate(row))
            for start, end in plan.raw:
                where = (customer_id, meter.event_name, start, end)
                rows = await conn.execute_fetchall(_RAW_RANGE, where)
                total = merge(meter.aggregation, total, fold_rows(meter, rows))
        return total

    async def meter_quantities_by_customer(
        self, meter_name: str, start_ms: int, end_ms: int
    ) -> dict[str, Aggregate]:
        """See `Store.meter_quantities_by_customer`."""
        meter = self._meter(meter_name)
        plan = plan_read(start_ms, end_ms, self._bucket_ms)
        if plan.raw:
            raise ValueError(f"[{start_ms}, {end_ms}) is not aligned to {self._bucket_ms} ms")
        if plan.buckets is None:
            return {}
        params = self._plan_params(plan) | {"meter": meter.name}
        totals: dict[str, Aggregate] = {}
        for row in await self._read(_ALL_CUSTOMER_AGGREGATES, params):
            totals[row[0]] = merged(meter.aggregation, totals.get(row[0]), _aggregate(row[1:]))
        return totals

    def _plan_params(self, plan: ReadPlan) -> dict[str, int]:
        assert plan.buckets is not None  # callers read raw events only otherwise
        rollup_start, rollup_end = plan.rollups or (0, 0)
        return {"start": plan.buckets[0], "end": plan.buckets[1], "bucket_ms": self._bucket_ms,
                "rollup_start": rollup_start, "rollup_end": rollup_end,
                "rollup_ms": self._bucket_ms * ROLLUP_BUCKETS}

    async def rebuild_aggregates(self, meters: Sequence[str] | None = None) -> None:
        """See `Store.rebuild_aggregates`: one transaction per meter, raw events read in
        batches of `_REBUILD_BATCH`. Raises KeyError for an unknown meter name."""
        names = list(self._meters) if meters is None else meters
        for meter in [self._meter(name) for name in names]:
            await self._rebuild(meter)

    async def _rebuild(self, meter: Meter) -> None:
        async with self._transaction() as conn:
            await conn.execute("DELETE FROM meter_aggregates WHERE meter = ?", (meter.name,))
            after = 0
            while rows := list(await conn.execute_fetchall(
                _REBUILD_SCAN, (after, meter.event_name, _REBUILD_BATCH)
            )):
                batch = BatchFold((meter,), self._bucket_ms)
                for seq, customer_id, ts_ms, metadata in rows:
                    batch.add(customer_id, meter.event_name, ts_ms, seq, decode_metadata(metadata))
                await self._merge_deltas(conn, batch.deltas)
                after = rows[-1][0]
            await conn.execute(
                "INSERT OR REPLACE INTO meter_state VALUES (?, ?, ?, ?, ?)",
                (*self._built_with(meter), self._clock()),
            )

    def _built_with(self, meter: Meter) -> tuple[str, str, int, int]:
        """The meter_state row (less built_at) of aggregates built now."""
        return (meter.name, meter.fingerprint(), self._bucket_ms,
                self._bucket_ms * ROLLUP_BUCKETS)

    async def _sync_meters(self, rebuild_all: bool) -> None:
        """Rebuild the meters whose definition or bucket size changed since their aggregates
        were built (and new ones; all with `rebuild_all`); forget the aggregates of meters no
        longer configured."""
        built = {row[0]: tuple(row) for row in await self._read(
            "SELECT meter, fingerprint, bucket_ms, rollup_ms FROM meter_state"
        )}
        gone = [name for name in built if name not in self._meters]
        if gone:
            async with self._transaction() as conn:
                for table in ("meter_aggregates", "meter_state"):
                    await conn.executemany(
                        f"DELETE FROM {table} WHERE meter = ?", [(n,) for n in gone]
                    )
            _log.info("dropped the aggregates of removed meters: %s", ", ".join(gone))
        for meter in self._meters.values():
            was = built.get(meter.name)
            if rebuild_all or was != self._built_with(meter):
                reason = ("rebuild requested" if rebuild_all else "new meter" if was is None
                          else "definition or bucket size changed")
                _log.info("rebuilding the aggregates of meter %s (%s)", meter.name, reason)
                await self._rebuild(meter)

    async def _merge_deltas(
        self, conn: aiosqlite.Connection, deltas: Mapping[str, Mapping[tuple[str, int], Aggregate]]
    ) -> None:
        """Merge per-meter bucket deltas into the bucket and rollup rows: one read of the
        touched rows and one executemany upsert per meter."""
        for meter_name, per_bucket in deltas.items():
            kind = self._meters[meter_name].aggregation
            per_key = with_rollups(kind, per_bucket, self._bucket_ms)
            touched = json.dumps(list(per_key))
            existing = {
                (row[0], row[1], row[2]): _aggregate(row[3:])
                for row in await conn.execute_fetchall(_TOUCHED_AGGREGATES, (touched, meter_name))
            }
            rows = []
            for key, delta in per_key.items():
                agg = merged(kind, existing.get(key), delta)
                rows.append((meter_name, *key, agg.count, str(agg.value), agg.last_ts,
                             agg.last_seq))
            await conn.executemany(_UPSERT_AGGREGATE, rows)

    def _meter(self, name: str) -> Meter:
        try:
            return self._meters[name]
        except KeyError:
            raise KeyError(f"unknown meter {name!r}") from None

    # ---------------------------------------------------------- customers, keys

    async def ensure_customer(self, customer_id: str, now_ms: int) -> Customer:
        """See `Store.ensure_customer`."""
        async with self._transaction() as conn:
            await conn.execute(_INSERT_CUSTOMER, (customer_id, now_ms))
            return await _customer(conn, customer_id)

    async def get_customer(self, customer_id: str) -> Customer | None:
        """See `Store.get_customer`."""
        rows = await self._read(
            f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE id = ?", (customer_id,)
        )
        return next((Customer(*row) for row in rows), None)

    async def list_customers(self, limit: int, offset: int = 0) -> list[Customer]:
        """See `Store.list_customers`."""
        rows = await self._read(
            f"SELECT {_CUSTOMER_COLUMNS} FROM customers ORDER BY id LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [Customer(*row) for row in rows]

    async def set_customer_plan(self, customer_id: str, plan: str | None, now_ms: int) -> Customer:
        """See `Store.set_customer_plan`: the plan applies from now_ms (`assign_plan`)."""
        return await self.assign_plan(customer_id, plan, now_ms, now_ms)

    async def add_key(
        self, customer_id: str, key_id: str, key_hash: bytes, prefix: str, now_ms: int
    ) -> ApiKey:
        """See `Store.add_key`. Raises DuplicateKey when the id or the hash is stored."""
        async with self._transaction() as conn:
            await conn.execute(_INSERT_CUSTOMER, (customer_id, now_ms))
            try:
                await conn.execute(
                    "INSERT INTO api_keys (key_id, customer_id, key_hash, prefix, created_at_ms)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (key_id, customer_id, key_hash, prefix, now_ms),
                )
            except sqlite3.IntegrityError as exc:
                raise DuplicateKey(f"key {key_id!r} or its secret is already stored") from exc
            await _bump_key_version(conn)
        return ApiKey(key_id, customer_id, prefix, now_ms, None)

    async def revoke_key(self, customer_id: str, key_id: str, now_ms: int) -> bool:
        """See `Store.revoke_key`."""
        async with self._transaction() as conn:
            cursor = await conn.execute(
                "UPDATE api_keys SET revoked_at_ms = ?"
                " WHERE key_id = ? AND customer_id = ? AND revoked_at_ms IS NULL",
                (now_ms, key_id, customer_id),
            )
            revoked = cursor.rowcount == 1
            if revoked:
                await _bump_key_version(conn)
        return revoked

    async def list_keys(self, customer_id: str) -> list[ApiKey]:
        """See `Store.list_keys`."""
        rows = await self._read(
            "SELECT key_id, customer_id, prefix, created_at_ms, revoked_at_ms FROM api_keys"
            " WHERE customer_id = ? ORDER BY created_at_ms, key_id",
            (customer_id,),
        )
        return [ApiKey(*row) for row in rows]

    async def active_key_hashes(self) -> dict[bytes, tuple[str, str]]:
        """See `Store.active_key_hashes`."""
        rows = await self._read(
            "SELECT key_hash, customer_id, key_id FROM api_keys WHERE revoked_at_ms IS NULL"
        )
        return {row[0]: (row[1], row[2]) for row in rows}

    async def keys_version(self) -> int:
        """See `Store.keys_version`."""
        rows = await self._read("SELECT version FROM key_version")
        return int(next(iter(rows))[0])


# ------------------------------------------------------------------- helpers


async def _known_ids(conn: aiosqlite.Connection, event_ids: list[str]) -> set[str]:
    rows = await conn.execute_fetchall(_KNOWN_IDS, (json.dumps(event_ids),))
    return {row[0] for row in rows}


async def _customer(conn: aiosqlite.Connection, customer_id: str) -> Customer:
    rows = await conn.execute_fetchall(
        f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE id = ?", (customer_id,)
    )
    return Customer(*next(iter(rows)))


async def _bump_key_version(conn: aiosqlite.Connection) -> None:
    await conn.execute("UPDATE key_version SET version = version + 1")


def _stored_event(row: Sequence[Any]) -> StoredEvent:
    seq, event_id, customer_id, event_name, ts_ms, metadata, source, ingested_at_ms = row
    event = UsageEvent(event_id, customer_id, event_name, ts_ms, decode_metadata(metadata),
                       cast(Source, source))
    return StoredEvent(event, seq, ingested_at_ms)
