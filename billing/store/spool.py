"""The outage spool of fleet mode: events wait in a local SQLite file while PostgreSQL is away.

`SpoolingAppender` is the event writer's `Appender` in front of the PostgreSQL store. While
its spool is empty an append goes straight to the store. When the store is unreachable
(`StoreUnreachable`), or not opened yet (a replica that started while PostgreSQL was down),
the batch goes to the spool instead, durably, and the writer carries on as if it had been
stored, so the replica keeps proxying; from then on every append goes to the spool too, so
that no event overtakes an older one. `run()`, a loop its owner keeps as a task, forwards the
spool to the store oldest first, in batches, once the store is open; a batch leaves the spool
only after the store committed it. A batch whose commit was in flight when the connection
broke is forwarded again, which event ids make harmless: nothing is lost, nothing counted
twice.

A spooled append reports each event the spool had not seen as stored, the store's last known
watermark, and no skipped counts: what only PostgreSQL can tell is reported to the observer
when the batch is forwarded (events it already held as duplicates, events a meter skipped).
Any other StoreError of the store propagates (the writer retries the batch itself).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import cast

import aiosqlite

from billing.events import Source, UsageEvent, now_ms
from billing.store.base import AppendResult, StoreError, decode_metadata, encode_metadata
from billing.store.pg_connection import StoreUnreachable
from billing.writer import Appender, WriterObserver

_log = logging.getLogger(__name__)

# id orders the spool: a rowid only grows while rows remain, and rows leave oldest first.
_SCHEMA = """
    CREATE TABLE IF NOT EXISTS spooled_events (
        id           INTEGER PRIMARY KEY,
        event_id     TEXT    NOT NULL UNIQUE,
        customer_id  TEXT    NOT NULL,
        event_name   TEXT    NOT NULL,
        timestamp_ms INTEGER NOT NULL,
        metadata     TEXT    NOT NULL,
        source       TEXT    NOT NULL
    ) STRICT"""
_COLUMNS = "event_id, customer_id, event_name, timestamp_ms, metadata, source"
_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",  # spooled must mean durable, as stored does
    "PRAGMA busy_timeout = 10000",
)


class Spool:
    """Events waiting for the store, oldest first, in one SQLite file (a table of its own, so
    the file may be the one a single-instance meterproxy stored its events in).

    Every method raises StoreError when the file cannot be read or written; a failed write
    changes nothing.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: aiosqlite.Connection | None = None
        self._size = 0
        self._lock = asyncio.Lock()

    @property
    def size(self) -> int:
        """How many events wait in the spool."""
        return self._size

    async def open(self) -> None:
        """Open (or create) the file; events spooled before a restart are still there."""
        try:
            self._conn = await aiosqlite.connect(self._path, isolation_level=None)
            for pragma in _PRAGMAS:
                await self._conn.execute(pragma)
            await self._conn.execute(_SCHEMA)
            rows = await self._conn.execute_fetchall("SELECT count(*) FROM spooled_events")
            self._size = int(next(iter(rows))[0])
        except sqlite3.Error as exc:
            await self.close()
            raise StoreError(f"{self._path}: {exc}") from exc

    async def close(self) -> None:
        """Close the file; safe to call twice or after a failed open."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def add(self, events: Sequence[UsageEvent]) -> tuple[bool, ...]:
        """Spool the events, durably; per input index, True when the spool had not seen the
        event_id (not spooled, nor earlier in the batch)."""
        firsts: dict[str, int] = {}
        for index, event in enumerate(events):
            firsts.setdefault(event.event_id, index)
        async with self._transaction() as conn:
            known = {row[0] for row in await conn.execute_fetchall(
                "SELECT event_id FROM spooled_events"
                " WHERE event_id IN (SELECT value FROM json_each(?))", (json.dumps(list(firsts)),)
            )}
            fresh = [index for event_id, index in firsts.items() if event_id not in known]
            await conn.executemany(
                f"INSERT INTO spooled_events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                [_row(events[index]) for index in fresh],
            )
        self._size += len(fresh)
        added = set(fresh)
        return tuple(index in added for index in range(len(events)))

    async def oldest(self, limit: int) -> list[tuple[int, UsageEvent]]:
        """Up to `limit` (spool id, event) pairs, oldest first; they stay spooled."""
        rows = await self._read(
            f"SELECT id, {_COLUMNS} FROM spooled_events ORDER BY id LIMIT ?", (limit,)
        )
        return [(row[0], _event(row[1:])) for row in rows]

    async def remove_through(self, spool_id: int) -> None:
        """Remove every event up to and including spool id `spool_id`, durably."""
        async with self._transaction() as conn:
            cursor = await conn.execute("DELETE FROM spooled_events WHERE id <= ?", (spool_id,))
        self._size -= cursor.rowcount

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction, rolled back on any error; sqlite errors as StoreError."""
        conn = self._opened()
        async with self._lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
                await conn.execute("COMMIT")
            except sqlite3.Error as exc:
                await _rollback(conn)
                raise StoreError(f"{self._path}: {exc}") from exc
            except BaseException:
                await _rollback(conn)
                raise

    async def _read(self, sql: str, params: Sequence[object]) -> list[sqlite3.Row]:
        conn = self._opened()
        async with self._lock:
            try:
                return list(await conn.execute_fetchall(sql, params))
            except sqlite3.Error as exc:
                raise StoreError(f"{self._path}: {exc}") from exc

    def _opened(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreError("the spool is not open")
        return self._conn


async def _rollback(conn: aiosqlite.Connection) -> None:
    if conn.in_transaction:
        try:
            await conn.execute("ROLLBACK")
        except sqlite3.Error:  # SQLite already rolled back (e.g. after a full disk)
            _log.debug("rollback after a failed spool write also failed", exc_info=True)


def _row(event: UsageEvent) -> tuple[str, str, str, int, str, str]:
    return (event.event_id, event.customer_id, event.event_name, event.timestamp_ms,
            encode_metadata(event.metadata), event.source)


def _event(row: Sequence[object]) -> UsageEvent:
    event_id, customer_id, event_name, ts_ms, metadata, source = row
    return UsageEvent(str(event_id), str(customer_id), str(event_name), cast(int, ts_ms),
                      decode_metadata(str(metadata)), cast(Source, source))


class SpoolingAppender:
    """The writer's Appender: `primary` while it is reachable, `spool` while it is not; see
    the module docstring. Forwarded batches hold at most `batch_size` events and are stamped
    with `clock()`; after a failed forward, `run` tries again `retry_s` later. `observer`
    hears the outcomes only a forward learns. With `primary_open` False, everything is
    spooled until `primary_opened()`."""

    def __init__(
        self,
        primary: Appender,
        spool: Spool,
        *,
        clock: Callable[[], int] = now_ms,
        batch_size: int = 1000,
        retry_s: float = 1.0,
        observer: WriterObserver | None = None,
        primary_open: bool = True,
    ) -> None:
        self._primary = primary
        self._spool = spool
        self._clock = clock
        self._batch_size = batch_size
        self._retry_s = retry_s
        self._observer = observer
        self._open = primary_open
        self._lock = asyncio.Lock()  # one append or forwarded batch at a time: keeps order
        self._waiting = asyncio.Event()  # the primary is open and the spool holds events
        self._watermark = 0  # the primary's, as of its last commit seen here

    @property
    def spooled(self) -> int:
        """Events in the spool, waiting for the primary store."""
        return self._spool.size

    def primary_opened(self) -> None:
        """The primary store is open: appends may go to it, the spool may be forwarded."""
        self._open = True
        if self.spooled:
            self._waiting.set()

    async def append(self, events: Sequence[UsageEvent], now_ms: int) -> AppendResult:
        """The primary's append while it is open and nothing is spooled; else (or when the
        primary turns out unreachable) a durable spooling. Raises StoreError when neither
        can store them."""
        async with self._lock:
            if self._open and not self._spool.size:
                try:
                    result = await self._primary.append(events, now_ms)
                except StoreUnreachable as exc:
                    _log.warning("the store is unreachable (%s): spooling events locally", exc)
                else:
                    self._watermark = result.watermark
                    return result
            stored = await self._spool.add(events)
            if self._open:
                self._waiting.set()
        return AppendResult(stored, {}, self._watermark)

    async def forward(self) -> int:
        """Forward spooled events to the primary, oldest first, until the spool is empty or
        the primary is unreachable; returns how many events left the spool.

        Raises StoreError (other than StoreUnreachable) when the primary refuses a batch; it
        stays spooled.
        """
        forwarded = 0
        while True:
            async with self._lock:
                batch = await self._spool.oldest(self._batch_size)
                if not batch:
                    self._waiting.clear()
                    return forwarded
                events = [e for _, e in batch]
                try:
                    result = await self._primary.append(events, self._clock())
                except StoreUnreachable:
                    return forwarded
                self._watermark = result.watermark
                await self._spool.remove_through(batch[-1][0])
            self._report(events, result)
            forwarded += len(batch)

    def _report(self, events: Sequence[UsageEvent], result: AppendResult) -> None:
        """Tell the observer what the spooling could not know: events the primary held
        already (counted as stored when spooled, and now once as duplicate) and events a
        meter skipped."""
        if self._observer is None:
            return
        duplicates: Counter[tuple[str, str, str]] = Counter(
            (e.event_name, e.source, "duplicate")
            for e, stored in zip(events, result.stored, strict=True) if not stored
        )
        if duplicates:
            self._observer.on_stored(duplicates)
        for (meter, reason), n in result.skipped.items():
            self._observer.on_skipped(meter, reason, n)

    async def run(self) -> None:
        """Forward the spool whenever the primary is open and the spool holds events,
        retrying every `retry_s` while the primary is away; runs until cancelled."""
        while True:
            if not (self._open and self.spooled):
                await self._waiting.wait()
            try:
                forwarded = await self.forward()
            except StoreError as exc:
                _log.error("forwarding spooled events failed (%s); %d wait", exc, self.spooled)
                forwarded = 0
            if forwarded:
                _log.info("forwarded %d spooled events; %d wait", forwarded, self.spooled)
            if self.spooled:
                await asyncio.sleep(self._retry_s)
