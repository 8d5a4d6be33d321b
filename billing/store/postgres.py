"""The PostgreSQL engine of `LedgerStore` (asyncpg): one database shared by every replica.

Appends across replicas: every append locks the single row of `ingest_counter` first, takes
the next seq and ingested_at from it, and holds the lock until it commits. Appends therefore
commit one at a time in ingested_at (and seq) order, fleet-wide, which is what makes the
largest visible ingested_at a watermark: no event with a smaller ingested_at can still be
uncommitted. The cost is that the fleet's appends do not overlap: each holds the lock for
its dedup probe, inserts, aggregate merge and commit. They would mostly queue anyway:
replicas metering the same customers update the same current aggregate rows, whose row locks
serialise them just the same. A row lock (not an advisory lock) also carries the counter
values, and is freed with the transaction however it ends.

Everything else (dedup by event_id, created customers, bucket and rollup aggregates built with
`BatchFold` and `with_rollups`, reads planned by `plan_read`) behaves as in the SQLite engine,
except which meters opening rebuilds (billing/store/pg_meters.py: replicas of a rolling
deploy must not rebuild each other's aggregates). Quantities are NUMERIC, exact. The SQL of
events, aggregate merges, customers and keys lives in pg_events.py, pg_aggregates.py and
pg_customers.py; the billing tables are `PostgresLedger`'s (pg_ledger.py), a base class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from billing.events import StoredEvent, UsageEvent, now_ms
from billing.meters import Aggregate, Meter, Tally, merge
from billing.store import (
    overlap,
    pg_aggregates,
    pg_customers,
    pg_events,
    pg_meters,
    pg_rollups,
)
from billing.store.base import (
    ROLLUP_BUCKETS,
    AggregateDeltas,
    ApiKey,
    AppendResult,
    BatchFold,
    Customer,
    ReadPlan,
    decode_metadata,
    fold_rows,
    merged,
    plan_read,
)
from billing.store.epochs import PG_EPOCH_BITS, epoch_ranges, pg_in_epochs
from billing.store.pg_connection import Connection, Row
from billing.store.pg_ledger import PostgresLedger
from billing.store.pg_schema import migrate, schema_lock
from billing.store.pg_url import check_url

_log = logging.getLogger(__name__)

_REBUILD_BATCH = 10_000  # raw events read per query while rebuilding: bounds memory
# Customers known to be stored, so that an append does not re-insert them: a bound on the
# memory this takes (the set starts over when it is reached).
_KNOWN_CUSTOMERS_MAX = 200_000

_LOCK_COUNTER = """
    SELECT last_seq, ingested_at_ms, meters_version, rollups_until FROM ingest_counter
    FOR UPDATE"""
_ROLLUPS_UNTIL = "SELECT rollups_until FROM ingest_counter"
# Advance the counter, and widen the timestamp ranges of the epochs the append stored events
# in (epochs.py): one trip for the append's bookkeeping.
_ADVANCE_COUNTER = """
    WITH widened AS (
        INSERT INTO event_epochs (epoch, min_ts_ms, max_ts_ms)
        SELECT * FROM unnest($3::bigint[], $4::bigint[], $5::bigint[])
        ON CONFLICT (epoch) DO UPDATE SET
            min_ts_ms = least(event_epochs.min_ts_ms, excluded.min_ts_ms),
            max_ts_ms = greatest(event_epochs.max_ts_ms, excluded.max_ts_ms))
    UPDATE ingest_counter SET last_seq = $1, ingested_at_ms = $2"""
_AGGREGATE_COLUMNS = "count, value, last_ts_ms, last_seq"
# Rows of a ReadPlan: rollups within [$4, $5), buckets elsewhere in [$2, $3).
_PLANNED_ROWS = """
    bucket_start_ms >= $2 AND bucket_start_ms < $3 AND size_ms =
        CASE WHEN bucket_start_ms >= $4 AND bucket_start_ms < $5 THEN $6::bigint
             ELSE $7::bigint END"""
# The same rows for one customer: rollups in [$4, $5), buckets in [$2, $4) and [$5, $3), each
# one range of the primary key.
_SPANS = f"""
    SELECT {_AGGREGATE_COLUMNS} FROM meter_aggregates WHERE meter = $1 AND customer_id = $8
        AND size_ms = {{size}}::bigint
        AND bucket_start_ms >= {{start}} AND bucket_start_ms < {{end}}"""
_CUSTOMER_AGGREGATES = " UNION ALL ".join(
    _SPANS.format(size=size, start=start, end=end)
    for size, start, end in (("$6", "$4", "$5"), ("$7", "$2", "$4"), ("$7", "$5", "$3")))
_ALL_CUSTOMER_AGGREGATES = f"""
    SELECT customer_id, {_AGGREGATE_COLUMNS} FROM meter_aggregates
    WHERE meter = $1 AND {_PLANNED_ROWS}"""
_RAW_RANGE = f"""
    SELECT seq, timestamp_ms, metadata FROM events AS e
    WHERE customer_id = $1 AND event_name = $2 AND timestamp_ms >= $3 AND timestamp_ms < $4
        AND {pg_in_epochs("e", "$3", "$4")}"""
_REBUILD_SCAN = """
    SELECT seq, customer_id, timestamp_ms, metadata FROM events
    WHERE seq > $1 AND event_name = $2 ORDER BY seq LIMIT $3"""
_SAVE_METER_STATE = """
    INSERT INTO meter_state VALUES ($1, $2, $3, $4, $5, true)
    ON CONFLICT (meter) DO UPDATE SET fingerprint = excluded.fingerprint,
        bucket_ms = excluded.bucket_ms, rollup_ms = excluded.rollup_ms,
        built_at_ms = excluded.built_at_ms, complete = true"""


class PostgresStore(PostgresLedger):
    """`LedgerStore` on a PostgreSQL database shared by replicas; see the module docstring.

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
        super().__init__(url, pool_size, connect_timeout_s, command_timeout_s)
        self._meters = {meter.name: meter for meter in meters}
        self._kinds = {meter.name: meter.aggregation for meter in meters}
        self._bucket_ms = bucket_ms
        self._clock = clock
        self._known_customers: set[str] = set()
        # The meters this replica folds, as of meters_version (None: not read yet).
        self._folded: tuple[Meter, ...] = ()
        self._meters_version: int | None = None

    # ----------------------------------------------------------------- lifecycle

    async def open(self, *, rebuild_all: bool = False) -> None:
        """Connect, migrate the schema and build the aggregates opening calls for
        (pg_meters.py; every meter's with `rebuild_all`: `meterproxy rebuild`), holding the
        fleet's schema lock so that replicas starting together do each step once.

        Raises StoreUnreachable when the server cannot be reached, StoreError when the
        database refuses or holds a schema newer than this version knows.
        """
        await self.open_pool(pg_aggregates.prepare_connection)
        try:
            async with self._connection() as conn, schema_lock(conn):
                await migrate(conn, self._clock())
                await self._sync_meters(conn, rebuild_all)
        except BaseException:
            await self.close()
            raise

    # -------------------------------------------------------------------- events

    async def append(self, events: Sequence[UsageEvent], now_ms: int) -> AppendResult:
        """See `Store.append`. Raises StoreError (nothing stored) when the write fails;
        StoreUnreachable when the connection broke (a commit in flight may have stored it).

        The Python work overlaps the server's (billing/store/overlap.py): the events are
        folded while they are inserted, the deltas built while they are merged."""
        firsts: dict[str, int] = {}
        for index, event in enumerate(events):
            firsts.setdefault(event.event_id, index)  # the first of a batch's duplicates wins
        stored = [False] * len(events)
        async with self._transaction() as conn:
            last_seq, watermark, version, until = _counter(await conn.fetchrow(_LOCK_COUNTER))
            if version != self._meters_version:  # another replica changed the built meters
                await self._adopt(conn, version)
            stamp = max(now_ms, watermark + 1)
            fresh, new, batch = await self._insert_fresh(conn, events, firsts, last_seq + 1,
                                                         stamp)
            if not fresh:
                return AppendResult(tuple(stored), {}, watermark)
            created = self._unknown_customers(new, stamp)
            if created:
                await pg_customers.insert_missing(conn, created)
            by_meter = await self._merge(conn, batch, until)
            epochs, earliest, latest = zip(
                *epoch_ranges(last_seq + 1, new, PG_EPOCH_BITS), strict=True)
            await conn.execute(_ADVANCE_COUNTER, last_seq + len(fresh), stamp, epochs,
                               earliest, latest)
            await self._seal_passed_days(conn, stamp, until)
        self._remember_customers(created)
        for index in fresh:
            stored[index] = True
        deltas = AggregateDeltas(watermark, stamp, self._bucket_ms, by_meter)
        return AppendResult(tuple(stored), dict(batch.skipped), stamp, deltas)

    async def _insert_fresh(
        self, conn: Connection, events: Sequence[UsageEvent], firsts: Mapping[str, int],
        first_seq: int, stamp: int,
    ) -> tuple[list[int], list[UsageEvent], BatchFold]:
        """Insert the events of `firsts` (id -> index) not stored yet, numbered from
        `first_seq`; their indexes, the events, and their fold. Tries them all first: a probe
        of every id, and a second fold, only follow a refusal (pg_events.insert)."""
        fresh = list(firsts.values())
        new = [events[i] for i in fresh]
        inserted, batch = await self._insert_folding(conn, new, first_seq, stamp)
        if inserted:
            return fresh, new, batch
        known = await pg_events.known_ids(conn, firsts)
        fresh = [index for event_id, index in firsts.items() if event_id not in known]
        new = [events[i] for i in fresh]
        if not fresh:  # nothing new: no fold (the one above assumed all were)
            return fresh, new, BatchFold(self._folded, self._bucket_ms)
        _, batch = await self._insert_folding(conn, new, first_seq, stamp)
        return fresh, new, batch

    async def _insert_folding(self, conn: Connection, events: list[UsageEvent], first_seq: int,
                              stamp: int) -> tuple[bool, BatchFold]:
        """`pg_events.insert` of the events, folding them meanwhile (overlap.py): whether
        they were stored, and their fold (to be dropped when they were not)."""
        batch = BatchFold(self._folded, self._bucket_ms)
        inserted, _ = await overlap.both(pg_events.insert(conn, events, first_seq, stamp),
                                         overlap.fold_in_slices(batch, events, first_seq))
        return inserted, batch

    async def _seal_passed_days(self, conn: Connection, stamp_ms: int, until_ms: int) -> None:
        """Seal the days that ended long enough before `stamp_ms` (pg_rollups.py)."""
        sealed = pg_rollups.next_until(stamp_ms, until_ms, self._bucket_ms * ROLLUP_BUCKETS)
        if sealed is not None:
            kinds = {m.name: m.aggregation for m in self._folded}
            await pg_rollups.seal(conn, kinds, self._bucket_ms, until_ms, sealed)

    async def _adopt(self, conn: Connection, version: int) -> None:
        """Learn which meters to fold from the stored state (pg_meters.adopt)."""
        folded = await pg_meters.adopt(conn, self._meters.values(), self._bucket_ms)
        self._folded = tuple(m for m in self._meters.values() if m.name in folded)
        self._meters_version = version

    def _unknown_customers(self, events: Sequence[UsageEvent], ingested_at_ms: int) -> dict[
            str, int]:
        """customer -> creation time of the events' customers not known to be stored: a new
        customer exists from its earliest event, so its first period covers it."""
        created: dict[str, int] = {}
        known = self._known_customers
        for e in events:
            if e.customer_id not in known:
                created[e.customer_id] = min(created.get(e.customer_id, ingested_at_ms),
                                             e.timestamp_ms)
        return created

    def _remember_customers(self, committed: Mapping[str, int]) -> None:
        """Customers are never removed from the table (DELETE marks them): once committed,
        they need no insert again."""
        if len(self._known_customers) + len(committed) > _KNOWN_CUSTOMERS_MAX:
            self._known_customers.clear()
        self._known_customers.update(committed)

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
        total: Aggregate | None = None
        async with self._snapshot() as conn:
            plan = await self._plan(conn, start_ms, end_ms)
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
        if plan_read(start_ms, end_ms, self._bucket_ms).raw:
            raise ValueError(f"[{start_ms}, {end_ms}) is not aligned to {self._bucket_ms} ms")
        async with self._snapshot() as conn:
            plan = await self._plan(conn, start_ms, end_ms)
            if plan.buckets is None:
                return {}
            rows = await conn.fetch(_ALL_CUSTOMER_AGGREGATES, meter.name,
                                    *self._plan_params(plan))
        totals: dict[str, Aggregate] = {}
        for row in rows:
            agg = pg_aggregates.aggregate(row[1:])
            totals[row[0]] = merged(meter.aggregation, totals.get(row[0]), agg)
        return totals

    async def _plan(self, conn: Connection, start_ms: int, end_ms: int) -> ReadPlan:
        """How to read [start_ms, end_ms) in the snapshot of `conn` (rollups of sealed days)."""
        until = int(await conn.fetchval(_ROLLUPS_UNTIL))
        return pg_rollups.sealed_plan(plan_read(start_ms, end_ms, self._bucket_ms), until)

    def _plan_params(self, plan: ReadPlan) -> tuple[int, ...]:
        """$2..$7 of _PLANNED_ROWS and _CUSTOMER_AGGREGATES."""
        assert plan.buckets is not None  # callers read raw events only otherwise
        first, end = plan.buckets
        rollup_start, rollup_end = plan.rollups or (end, end)  # no rollup: none read
        return (first, end, rollup_start, rollup_end, self._bucket_ms * ROLLUP_BUCKETS,
                self._bucket_ms)

    async def rebuild_aggregates(self, meters: Sequence[str] | None = None) -> None:
        """See `Store.rebuild_aggregates`: one transaction per meter, raw events read in
        batches of `_REBUILD_BATCH`; appends of every replica wait meanwhile. Raises
        KeyError for an unknown meter name."""
        names = list(self._meters) if meters is None else meters
        for meter in [self._meter(name) for name in names]:
            async with self._transaction() as conn:
                await self._rebuild(conn, meter)

    async def _rebuild(self, conn: Connection, meter: Meter) -> None:
        """Recompute the meter's aggregates inside the caller's transaction."""
        # No append may touch the aggregates meanwhile, nor seal days.
        until = _counter(await conn.fetchrow(_LOCK_COUNTER))[3]
        await conn.execute("DELETE FROM meter_aggregates WHERE meter = $1", meter.name)
        after = 0
        while rows := await conn.fetch(_REBUILD_SCAN, after, meter.event_name, _REBUILD_BATCH):
            batch = BatchFold((meter,), self._bucket_ms)
            for seq, customer_id, ts_ms, metadata in rows:
                batch.add(customer_id, meter.event_name, ts_ms, seq, decode_metadata(metadata))
            await pg_aggregates.merge_rows(conn, self._delta_rows(batch, until), self._kinds)
            after = rows[-1][0]
        await conn.execute(_SAVE_METER_STATE, *pg_meters.built_with(meter, self._bucket_ms),
                           self._clock())
        await conn.execute(pg_meters.BUMP_VERSION)

    async def _sync_meters(self, conn: Connection, rebuild_all: bool) -> None:
        """Build, keep or drop aggregates as the fleet meter policy says (pg_meters.py),
        each meter in a transaction of its own on `conn`."""
        sync = pg_meters.plan_sync(await pg_meters.stored_state(conn), self._meters.values(),
                                   self._bucket_ms, rebuild_all)
        if sync.drop:
            async with conn.transaction():
                await conn.execute(_LOCK_COUNTER)
                for table in ("meter_aggregates", "meter_state"):
                    await conn.execute(f"DELETE FROM {table} WHERE meter = ANY($1::text[])",
                                       list(sync.drop))
                await conn.execute(pg_meters.BUMP_VERSION)
            _log.info("dropped the aggregates of meters no longer configured: %s",
                      ", ".join(sync.drop))
        if sync.foreign:
            _log.warning("kept the aggregates of meters this replica does not configure (another "
                         "replica may meter them; they miss this replica's events until "
                         "`meterproxy rebuild`): %s", ", ".join(sync.foreign))
        if sync.stale:
            _log.error("the shared aggregates of meter(s) %s were built with another definition "
                       "or bucket size: fleet mode does not rebuild them on its own; this replica "
                       "stores their events without folding them and billing pauses until "
                       "`meterproxy rebuild` runs with the configuration every replica runs",
                       ", ".join(sync.stale))
        for name in sync.build:
            _log.info("rebuilding the aggregates of meter %s (%s)", name,
                      "rebuild requested" if rebuild_all else "new meter")
            async with conn.transaction():
                await self._rebuild(conn, self._meters[name])

    async def _merge(self, conn: Connection, batch: BatchFold,
                     until_ms: int) -> dict[str, dict[tuple[str, int], Tally]]:
        """Merge an append's fold into the aggregate rows (`_delta_rows`); its deltas, the
        batch's tallies (`BatchFold.cells`)."""
        rows = self._delta_rows(batch, until_ms)
        if not rows:
            return {}
        await pg_aggregates.stage_rows(conn, rows)
        await pg_aggregates.merge_staged(conn, self._kinds)
        return batch.cells

    def _delta_rows(self, batch: BatchFold, until_ms: int) -> list[pg_aggregates.DeltaRow]:
        """A batch's tallies as delta rows of the bucket rows, and of the rollup rows of days
        sealed before `until_ms`: merged server side in one statement whatever the number of
        meters."""
        rows: list[pg_aggregates.DeltaRow] = []
        for name, tallies in batch.tallies.items():
            rows += pg_rollups.row_deltas(name, self._kinds[name], tallies, self._bucket_ms,
                                          until_ms)
        return rows

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
        """See `Store.set_customer_plan`: the plan applies from now_ms (`assign_plan`)."""
        return await self.assign_plan(customer_id, plan, now_ms, now_ms)

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


# ------------------------------------------------------------------- helpers


def _counter(row: Row | None) -> tuple[int, int, int, int]:
    """(last seq, watermark, meters version, rollups until) of the locked counter row."""
    assert row is not None  # the migration inserts the only row; nothing deletes it
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])
