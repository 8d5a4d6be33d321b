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

Rollups: an append writes bucket rows (and rollup rows of sealed days, for late events);
the first append stamped past a day's seal (base.py `sealed_until`) then seals it, each
meter in a transaction of its own after the append's (billing/store/sqlite_write.py).

The billing tables (plan history, credits, statements) are `SqliteLedger`'s, a base class.
The file must be a real path: ":memory:" would give the connections separate databases.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, cast

import aiosqlite

from billing.events import Source, StoredEvent, UsageEvent, now_ms
from billing.meters import Aggregate, Meter, merge
from billing.store import sqlite_write
from billing.store.base import (
    NOTHING_SEALED,
    ROLLUP_BUCKETS,
    ApiKey,
    AppendResult,
    BatchFold,
    Customer,
    DuplicateKey,
    ReadPlan,
    StoreError,
    decode_metadata,
    fold_rows,
    merged,
    plan_read,
    sealed_until,
)
from billing.store.epochs import literal_bounds, sqlite_in_epochs
from billing.store.migrate import migrate
from billing.store.sqlite_conn import aggregate_row as _aggregate
from billing.store.sqlite_conn import run_in_thread
from billing.store.sqlite_ledger import SqliteLedger
from billing.store.sqlite_write import EVENT_COLUMNS, INSERT_CUSTOMER, WATERMARK

_log = logging.getLogger(__name__)

_KNOWN_CUSTOMERS = 50_000
_CUSTOMER_COLUMNS = "id, created_at_ms, plan, deleted_at_ms"
_AGGREGATE_COLUMNS = "count, value, last_ts_ms, last_seq"
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
_RAW_RANGE = f"""
    SELECT seq, timestamp_ms, metadata FROM events AS e
    WHERE customer_id = ?1 AND event_name = ?2 AND timestamp_ms >= ?3 AND timestamp_ms < ?4
        AND {sqlite_in_epochs("e", "?3", "?4")}"""


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
        # Customers stored by earlier appends (none is ever deleted): an append inserts only
        # the others. Bounded: forgotten wholesale at _KNOWN_CUSTOMERS.
        self._known_customers: set[str] = set()
        # The days this store has sealed every meter up to; until the first append, unknown.
        self._sealed_until = NOTHING_SEALED

    # ----------------------------------------------------------------- lifecycle

    async def open(self, *, rebuild_all: bool = False) -> None:
        """Open the file (creating it), migrate the schema, rebuild changed meters' aggregates
        (every meter's with `rebuild_all`: `meterproxy rebuild`).

        Raises StoreError when the file cannot be opened or migrated, or holds a schema
        newer than this version knows.
        """
        try:
            writer = await self._open_writer()
            await run_in_thread(writer, sqlite_write.register_functions)
            await migrate(writer, self._clock())
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
        """See `Store.append`: one transaction, run whole on the writer's thread
        (billing/store/sqlite_write.py), then, when it stored any event, the days its stamp
        seals, if any (`seal`).
        Raises StoreError (nothing stored) when the append fails; a failed seal is logged
        and tried again by the next append."""
        batch = BatchFold(self._meters.values(), self._bucket_ms)
        result, customers = await self._write(
            sqlite_write.append, batch, events, now_ms, self._known_customers
        )
        # Only once committed: a customer of a failed append may not be stored.
        if len(self._known_customers) + len(customers) > _KNOWN_CUSTOMERS:
            self._known_customers.clear()
        self._known_customers.update(customers)
        until = sealed_until(result.watermark, self._bucket_ms)
        if any(result.stored) and until > self._sealed_until:
            try:
                await self.seal(until)
            except StoreError as exc:
                _log.warning("sealing the days before %d failed (tried again later): %s",
                             until, exc)
        return result

    async def seal(self, until_ms: int) -> None:
        """Give every meter rollup rows for its days before `until_ms` (a day boundary) not
        sealed yet, from their bucket rows: one transaction per meter, so that appends wait
        for one meter's seal at most. Raises StoreError when a transaction fails (the
        meters sealed before it stay sealed)."""
        for meter in self._meters.values():
            await self._write(sqlite_write.seal, meter.name, meter.aggregation,
                              self._bucket_ms, until_ms)
        self._sealed_until = max(self._sealed_until, until_ms)

    async def get_event(self, event_id: str) -> StoredEvent | None:
        """See `Store.get_event`."""
        rows = await self._read(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ?", (event_id,)
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
        if customer_id is not None:  # the index serves a customer's events epoch by epoch
            where += " AND " + sqlite_in_epochs("events", *literal_bounds(start_ms, end_ms))
        rows = await self._read(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE {where}"
            " ORDER BY timestamp_ms DESC, seq DESC LIMIT ? OFFSET ?",
            (*used.values(), limit, offset),
        )
        return [_stored_event(row) for row in rows]

    async def watermark(self) -> int:
        """See `Store.watermark`."""
        rows = await self._read(WATERMARK)
        return next(iter(rows))[0] or 0

    # ---------------------------------------------------------------- aggregates

    async def meter_aggregate(
        self, meter_name: str, customer_id: str, start_ms: int, end_ms: int
    ) -> Aggregate | None:
        """See `Store.meter_aggregate`: rollup and bucket rows from the aggregate table, the
        partial buckets at unaligned edges from the raw events of that sub-range, all from
        one snapshot."""
        meter = self._meter(meter_name)
        total: Aggregate | None = None
        async with self._snapshot() as conn:
            plan = plan_read(start_ms, end_ms, self._bucket_ms, await _sealed(conn, meter_name))
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
        if plan_read(start_ms, end_ms, self._bucket_ms).raw:
            raise ValueError(f"[{start_ms}, {end_ms}) is not aligned to {self._bucket_ms} ms")
        totals: dict[str, Aggregate] = {}
        async with self._snapshot() as conn:
            plan = plan_read(start_ms, end_ms, self._bucket_ms, await _sealed(conn, meter_name))
            if plan.buckets is None:
                return {}
            params = self._plan_params(plan) | {"meter": meter.name}
            for row in await conn.execute_fetchall(_ALL_CUSTOMER_AGGREGATES, params):
                totals[row[0]] = merged(meter.aggregation, totals.get(row[0]),
                                        _aggregate(row[1:]))
        return totals

    def _plan_params(self, plan: ReadPlan) -> dict[str, int]:
        assert plan.buckets is not None  # callers read raw events only otherwise
        rollup_start, rollup_end = plan.rollups or (0, 0)
        return {"start": plan.buckets[0], "end": plan.buckets[1], "bucket_ms": self._bucket_ms,
                "rollup_start": rollup_start, "rollup_end": rollup_end,
                "rollup_ms": self._bucket_ms * ROLLUP_BUCKETS}

    async def rebuild_aggregates(self, meters: Sequence[str] | None = None) -> None:
        """See `Store.rebuild_aggregates`: one transaction per meter, raw events read in
        batches of `sqlite_write.REBUILD_BATCH`. Raises KeyError for an unknown meter name."""
        names = list(self._meters) if meters is None else meters
        for meter in [self._meter(name) for name in names]:
            await self._rebuild(meter)

    async def _rebuild(self, meter: Meter) -> None:
        state = (*self._built_with(meter), self._clock())
        await self._write(sqlite_write.rebuild, meter, self._bucket_ms, state)

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

    def _meter(self, name: str) -> Meter:
        try:
            return self._meters[name]
        except KeyError:
            raise KeyError(f"unknown meter {name!r}") from None

    # ---------------------------------------------------------- customers, keys

    async def ensure_customer(self, customer_id: str, now_ms: int) -> Customer:
        """See `Store.ensure_customer`."""
        async with self._transaction() as conn:
            await conn.execute(INSERT_CUSTOMER, (customer_id, now_ms))
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
            await conn.execute(INSERT_CUSTOMER, (customer_id, now_ms))
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


async def _customer(conn: aiosqlite.Connection, customer_id: str) -> Customer:
    rows = await conn.execute_fetchall(
        f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE id = ?", (customer_id,)
    )
    return Customer(*next(iter(rows)))


async def _sealed(conn: aiosqlite.Connection, meter_name: str) -> int:
    """The meter's `rollups_until` in the connection's snapshot."""
    rows = await conn.execute_fetchall(
        "SELECT rollups_until FROM meter_state WHERE meter = ?", (meter_name,)
    )
    return next((row[0] for row in rows), NOTHING_SEALED)


async def _bump_key_version(conn: aiosqlite.Connection) -> None:
    await conn.execute("UPDATE key_version SET version = version + 1")


def _stored_event(row: Sequence[Any]) -> StoredEvent:
    seq, event_id, customer_id, event_name, ts_ms, metadata, source, ingested_at_ms = row
    event = UsageEvent(event_id, customer_id, event_name, ts_ms, decode_metadata(metadata),
                       cast(Source, source))
    return StoredEvent(event, seq, ingested_at_ms)
