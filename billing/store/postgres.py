"""The PostgreSQL engine of `Store` (asyncpg): one database shared by every replica of a fleet.

Appends across replicas: every append locks the single row of `ingest_counter` first, takes
the next seq and ingested_at from it, and holds the lock until it commits. Appends therefore
commit one at a time in ingested_at (and seq) order, fleet-wide, which is what makes the
largest visible ingested_at a watermark: no event with a smaller ingested_at can still be
uncommitted. The cost is that the fleet's appends do not overlap: each holds the lock for
its dedup probe, inserts, aggregate writes and commit (tens of ms per 1,000-event batch). They
would mostly queue anyway: replicas metering the same customers update the same current
aggregate rows, whose row locks serialise them just the same. A row lock (not an advisory
lock) also carries the counter values, and is freed with the transaction however it ends.

Everything else (dedup by event_id, created customers, bucket and rollup aggregates built with
`BatchFold` and `with_rollups`, reads planned by `plan_read`) behaves as in the SQLite engine.
Quantities are NUMERIC, exact. The SQL of events, aggregate writes, customers and keys lives
in pg_events.py, pg_aggregates.py and pg_customers.py beside this file.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from billing.events import StoredEvent, UsageEvent, now_ms
from billing.meters import Aggregate, Meter, merge
from billing.store import pg_aggregates, pg_customers, pg_events
from billing.store.base import (
    ROLLUP_BUCKETS,
    ApiKey,
    AppendResult,
    BatchFold,
    Customer,
    ReadPlan,
    StoreError,
    decode_metadata,
    fold_rows,
    merged,
    plan_read,
    with_rollups,
)
from billing.store.pg_connection import (
    Connection,
    Pool,
    Row,
    check_url,
    create_pool,
    redact,
    translated,
)
from billing.store.pg_schema import migrate, schema_lock

_log = logging.getLogger(__name__)

_REBUILD_BATCH = 10_000  # raw events read per query while rebuilding: bounds memory

_LOCK_COUNTER = "SELECT last_seq, ingested_at_ms FROM ingest_counter FOR UPDATE"
_ADVANCE_COUNTER = "UPDATE ingest_counter SET last_seq = $1, ingested_at_ms = $2"
_AGGREGATE_COLUMNS = "count, value, last_ts_ms, last_seq"
# Rows of a ReadPlan: rollups within [$4, $5), buckets elsewhere in [$2, $3).
_PLANNED_ROWS = """
    bucket_start_ms >= $2 AND bucket_start_ms < $3 AND size_ms =
        CASE WHEN bucket_start_ms >= $4 AND bucket_start_ms < $5 THEN $6::bigint
             ELSE $7::bigint END"""
_CUSTOMER_AGGREGATES = f"""
    SELECT {_AGGREGATE_COLUMNS} FROM meter_aggregates
    WHERE meter = $1 AND {_PLANNED_ROWS} AND customer_id = $8"""
_ALL_CUSTOMER_AGGREGATES = f"""
    SELECT customer_id, {_AGGREGATE_COLUMNS} FROM meter_aggregates
    WHERE meter = $1 AND {_PLANNED_ROWS}"""
_RAW_RANGE = """
    SELECT seq, timestamp_ms, metadata FROM events
    WHERE customer_id = $1 AND event_name = $2 AND timestamp_ms >= $3 AND timestamp_ms < $4"""
_REBUILD_SCAN = """
    SELECT seq, customer_id, timestamp_ms, metadata FROM events
    WHERE seq > $1 AND event_name = $2 ORDER BY seq LIMIT $3"""
_SAVE_METER_STATE = """
    INSERT INTO meter_state VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (meter) DO UPDATE SET fingerprint = excluded.fingerprint,
        bucket_ms = excluded.bucket_ms, rollup_ms = excluded.rollup_ms,
        built_at_ms = excluded.built_at_ms"""


class PostgresStore:
    """`Store` on a PostgreSQL database shared by replicas; see the module docstring.

    `url` is a libpq-style URL (postgresql://user:password@host:port/database); `meters`,
    `bucket_ms` and `clock` mean what they mean for SqliteStore. The pool holds at most
    `pool_size` connections; connecting gives up after `connect_timeout_s`, a statement after
    `command_timeout_s`. Every method raises StoreUnreachable (a StoreError) when the server
    cannot be reached, StoreError for anything else the database refuses. Raises ValueError
    at once for a URL that is not postgresql:// or has an invalid port.
    """

    def __init__(
        self,
        url: str,
        meters: Sequence[Meter],
        bucket_ms: int,
        *,
        clock: Callable[[], int] = now_ms,
        pool_size: int = 4,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 60.0,
    ) -> None:
        if bucket_ms <= 0:
            raise ValueError(f"bucket_ms must be positive, got {bucket_ms}")
        check_url(url)
        self._url = url
        self._where = redact(url)
        self._meters = {meter.name: meter for meter in meters}
        self._bucket_ms = bucket_ms
        self._clock = clock
        self._pool_settings = (pool_size, connect_timeout_s, command_timeout_s)
        self._connect_timeout_s = connect_timeout_s
        self._pool: Pool | None = None

    # ----------------------------------------------------------------- lifecycle

    async def open(self, *, rebuild_all: bool = False) -> None:
        """Connect, migrate the schema and rebuild changed meters' aggregates (every meter's
        with `rebuild_all`: `meterproxy rebuild`), holding the fleet's schema lock so that
        replicas starting together do each step once.

        Raises StoreUnreachable when the server cannot be reached, StoreError when the
        database refuses or holds a schema newer than this version knows.
        """
        self._pool = await create_pool(
            self._url, *self._pool_settings, init=pg_aggregates.prepare_connection
        )
        try:
            async with self._connection() as conn, schema_lock(conn):
                await migrate(conn, self._clock())
                await self._sync_meters(rebuild_all)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the pool; safe to call twice or after a failed open."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # -------------------------------------------------------------------- events

    async def append(self, events: Sequence[UsageEvent], now_ms: int) -> AppendResult:
        """See `Store.append`. Raises StoreError (nothing stored) when the write fails;
        StoreUnreachable when the connection broke (a commit in flight may have stored it)."""
        firsts: dict[str, int] = {}
        for index, event in enumerate(events):
            firsts.setdefault(event.event_id, index)  # the first of a batch's duplicates wins
        stored = [False] * len(events)
        async with self._transaction() as conn:
            last_seq, watermark = _pair(await conn.fetchrow(_LOCK_COUNTER))
            known = await pg_events.known_ids(conn, firsts)
            fresh = [index for event_id, index in firsts.items() if event_id not in known]
            if not fresh:
                return AppendResult(tuple(stored), {}, watermark)
            watermark = max(now_ms, watermark + 1)
            batch = await self._insert(conn, [events[i] for i in fresh], last_seq + 1, watermark)
            await self._merge_deltas(conn, batch.deltas)
            await conn.execute(_ADVANCE_COUNTER, last_seq + len(fresh), watermark)
        for index in fresh:
            stored[index] = True
        return AppendResult(tuple(stored), dict(batch.skipped), watermark)

    async def _insert(
        self, conn: Connection, events: list[UsageEvent], first_seq: int, ingested_at_ms: int
    ) -> BatchFold:
        """Insert new events (and their unknown customers); return their aggregate deltas."""
        batch = BatchFold(self._meters.values(), self._bucket_ms)
        # A new customer exists from its earliest event, so its first period covers it.
        created: dict[str, int] = {}
        for seq, e in enumerate(events, first_seq):
            created[e.customer_id] = min(created.get(e.customer_id, ingested_at_ms),
                                         e.timestamp_ms)
            batch.add(e.customer_id, e.event_name, e.timestamp_ms, seq, e.metadata)
        await pg_events.insert(conn, events, first_seq, ingested_at_ms)
        await pg_customers.insert_missing(conn, created)
        return batch

    async def get_event(self, event_id: str) -> StoredEvent | None:
        """See `Store.get_event`."""
        async with self._connection() as conn:
            return await pg_events.get(conn, event_id)

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
        async with self._connection() as conn:
            return await pg_events.page(
                conn, customer_id=customer_id, event_names=event_names, start_ms=start_ms,
                end_ms=end_ms, limit=limit, offset=offset,
            )

    async def watermark(self) -> int:
        """See `Store.watermark`: the counter row, committed with the events it stamped."""
        rows = await self._read("SELECT ingested_at_ms FROM ingest_counter")
        return int(rows[0][0])

    # ---------------------------------------------------------------- aggregates

    async def meter_aggregate(
        self, meter_name: str, customer_id: str, start_ms: int, end_ms: int
    ) -> Aggregate | None:
        """See `Store.meter_aggregate`: rollup and bucket rows, plus the raw events of the
        partial buckets at unaligned edges, all read in one snapshot."""
        meter = self._meter(meter_name)
        plan = plan_read(start_ms, end_ms, self._bucket_ms)
        total: Aggregate | None = None
        async with self._snapshot() as conn:
            if plan.buckets is not None:
                params = self._plan_params(plan)
                for row in await conn.fetch(_CUSTOMER_AGGREGATES, meter.name, *params,
                                            customer_id):
                    total = merge(meter.aggregation, total, pg_aggregates.aggregate(row))
            for start, end in plan.raw:
                rows = await conn.fetch(_RAW_RANGE, customer_id, meter.event_name, start, end)
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
        totals: dict[str, Aggregate] = {}
        rows = await self._read(_ALL_CUSTOMER_AGGREGATES, meter.name, *self._plan_params(plan))
        for row in rows:
            agg = pg_aggregates.aggregate(row[1:])
            totals[row[0]] = merged(meter.aggregation, totals.get(row[0]), agg)
        return totals

    def _plan_params(self, plan: ReadPlan) -> tuple[int, ...]:
        """$2..$7 of _PLANNED_ROWS."""
        assert plan.buckets is not None  # callers read raw events only otherwise
        rollup_start, rollup_end = plan.rollups or (0, 0)
        return (*plan.buckets, rollup_start, rollup_end, self._bucket_ms * ROLLUP_BUCKETS,
                self._bucket_ms)

    async def rebuild_aggregates(self, meters: Sequence[str] | None = None) -> None:
        """See `Store.rebuild_aggregates`: one transaction per meter, raw events read in
        batches of `_REBUILD_BATCH`; appends of every replica wait meanwhile. Raises
        KeyError for an unknown meter name."""
        names = list(self._meters) if meters is None else meters
        for meter in [self._meter(name) for name in names]:
            await self._rebuild(meter)

    async def _rebuild(self, meter: Meter) -> None:
        async with self._transaction() as conn:
            await conn.execute(_LOCK_COUNTER)  # no append may touch the aggregates meanwhile
            await conn.execute("DELETE FROM meter_aggregates WHERE meter = $1", meter.name)
            after = 0
            while rows := await conn.fetch(_REBUILD_SCAN, after, meter.event_name,
                                           _REBUILD_BATCH):
                batch = BatchFold((meter,), self._bucket_ms)
                for seq, customer_id, ts_ms, metadata in rows:
                    batch.add(customer_id, meter.event_name, ts_ms, seq, decode_metadata(metadata))
                await self._merge_deltas(conn, batch.deltas)
                after = rows[-1][0]
            await conn.execute(_SAVE_METER_STATE, *self._built_with(meter), self._clock())

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
                    await conn.execute(f"DELETE FROM {table} WHERE meter = ANY($1::text[])", gone)
            _log.info("dropped the aggregates of removed meters: %s", ", ".join(gone))
        for meter in self._meters.values():
            was = built.get(meter.name)
            if rebuild_all or was != self._built_with(meter):
                reason = ("rebuild requested" if rebuild_all else "new meter" if was is None
                          else "definition or bucket size changed")
                _log.info("rebuilding the aggregates of meter %s (%s)", meter.name, reason)
                await self._rebuild(meter)

    async def _merge_deltas(
        self, conn: Connection, deltas: Mapping[str, Mapping[tuple[str, int], Aggregate]]
    ) -> None:
        """Merge per-meter bucket deltas into the bucket and rollup rows: one read of every
        touched row and one write, whatever the number of meters."""
        per_key: dict[pg_aggregates.AggregateRowKey, Aggregate] = {
            (meter_name, *key): delta
            for meter_name, per_bucket in deltas.items()
            for key, delta in with_rollups(
                self._meters[meter_name].aggregation, per_bucket, self._bucket_ms
            ).items()
        }
        if not per_key:
            return
        stored = await pg_aggregates.stored_rows(conn, per_key)
        await pg_aggregates.write_rows(conn, {
            key: merged(self._meters[key[0]].aggregation, stored.get(key), delta)
            for key, delta in per_key.items()
        }, stored)

    def _meter(self, name: str) -> Meter:
        try:
            return self._meters[name]
        except KeyError:
            raise KeyError(f"unknown meter {name!r}") from None

    # ---------------------------------------------------------- customers, keys

    async def ensure_customer(self, customer_id: str, now_ms: int) -> Customer:
        """See `Store.ensure_customer`."""
        async with self._transaction() as conn:
            return await pg_customers.ensure(conn, customer_id, now_ms)

    async def get_customer(self, customer_id: str) -> Customer | None:
        """See `Store.get_customer`."""
        async with self._connection() as conn:
            return await pg_customers.get(conn, customer_id)

    async def list_customers(self, limit: int, offset: int = 0) -> list[Customer]:
        """See `Store.list_customers`."""
        async with self._connection() as conn:
            return await pg_customers.page(conn, limit, offset)

    async def set_customer_plan(self, customer_id: str, plan: str | None, now_ms: int) -> Customer:
        """See `Store.set_customer_plan`."""
        async with self._transaction() as conn:
            return await pg_customers.set_plan(conn, customer_id, plan, now_ms)

    async def add_key(
        self, customer_id: str, key_id: str, key_hash: bytes, prefix: str, now_ms: int
    ) -> ApiKey:
        """See `Store.add_key`. Raises DuplicateKey when the id or the hash is stored."""
        async with self._transaction() as conn:
            return await pg_customers.add_key(conn, customer_id, key_id, key_hash, prefix,
                                              now_ms)

    async def revoke_key(self, customer_id: str, key_id: str, now_ms: int) -> bool:
        """See `Store.revoke_key`."""
        async with self._transaction() as conn:
            return await pg_customers.revoke_key(conn, customer_id, key_id, now_ms)

    async def list_keys(self, customer_id: str) -> list[ApiKey]:
        """See `Store.list_keys`."""
        async with self._connection() as conn:
            return await pg_customers.keys_of(conn, customer_id)

    async def active_key_hashes(self) -> dict[bytes, tuple[str, str]]:
        """See `Store.active_key_hashes`."""
        async with self._connection() as conn:
            return await pg_customers.active_key_hashes(conn)

    async def keys_version(self) -> int:
        """See `Store.keys_version`."""
        rows = await self._read("SELECT version FROM key_version")
        return int(rows[0][0])

    # -------------------------------------------------------------- connections

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection; driver errors of the block as StoreError/StoreUnreachable."""
        if self._pool is None:
            raise StoreError("the store is not open")
        with translated(self._where):
            async with self._pool.acquire(timeout=self._connect_timeout_s) as conn:
                yield conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        """One read-committed write transaction, rolled back on any error."""
        async with self._connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Connection]:
        """Several reads that see one committed state of the database."""
        async with self._connection() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            yield conn

    async def _read(self, sql: str, *args: Any) -> list[Row]:
        async with self._connection() as conn:
            return await conn.fetch(sql, *args)


# ------------------------------------------------------------------- helpers


def _pair(row: Row | None) -> tuple[int, int]:
    assert row is not None  # the migration inserts the only row; nothing deletes it
    return int(row[0]), int(row[1])
