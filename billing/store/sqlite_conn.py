"""The connections to one SQLite file, shared by every part of the SQLite engine.

`SqliteFile` owns a writer connection (one transaction at a time, behind an asyncio lock) and
two readers: one for events, keys and customers, one for billing. Each aiosqlite connection
has its own thread and WAL gives each reader a consistent snapshot while the writer commits,
so a period close reading ten thousand customers does not hold up event reads or key polls.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import aiosqlite

from billing.meters import Aggregate
from billing.store.base import StoreError

_log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
WRITER_PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA wal_autocheckpoint = 10000",  # 40 MB of WAL: checkpoints rarely block a commit
    "PRAGMA foreign_keys = ON",
    # 8 MiB per connection: 64 MiB grew RSS by ~94 MB over a 1M-request soak for no measured
    # gain; pages beyond it come from the OS page cache.
    "PRAGMA cache_size = -8192",
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
)
READER_PRAGMAS = (
    "PRAGMA query_only = ON",
    "PRAGMA cache_size = -8192",
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
)


class SqliteFile:
    """Connections to the file at `path`; `open_connections` runs `prepare` on the writer
    (migrations) before the readers open, so they never see a half-migrated schema."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._billing_reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._billing_lock = asyncio.Lock()

    async def _open_writer(self) -> aiosqlite.Connection:
        self._writer = await connect(self._path, WRITER_PRAGMAS)
        return self._writer

    async def _open_readers(self) -> None:
        self._reader = await connect(self._path, READER_PRAGMAS)
        self._billing_reader = await connect(self._path, READER_PRAGMAS)

    async def close(self) -> None:
        """Close every connection; safe to call twice or after a failed open."""
        for conn in (self._billing_reader, self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._billing_reader = self._reader = self._writer = None

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; rolled back on any error, sqlite errors as StoreError."""
        conn = opened(self._writer)
        async with self._write_lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                yield conn
                await conn.execute("COMMIT")
            except sqlite3.Error as exc:
                await rollback(conn)
                raise StoreError(f"{self._path}: {exc}") from exc
            except BaseException:
                await rollback(conn)
                raise

    async def _write(
        self, fn: Callable[Concatenate[sqlite3.Connection, P], T], /, *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """`fn(connection, *args)` in one write transaction, run on the writer's thread in one
        trip: committed when fn returns, rolled back when it raises; sqlite errors as
        StoreError. fn must not await anything: it is plain synchronous sqlite3 code."""
        conn = opened(self._writer)
        async with self._write_lock:
            try:
                return await run_in_thread(conn, _in_transaction, fn, *args, **kwargs)
            except sqlite3.Error as exc:
                raise StoreError(f"{self._path}: {exc}") from exc

    @asynccontextmanager
    async def _snapshot(self, billing: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        """Several reads that see one committed state of the file (on the billing reader
        when `billing`)."""
        conn = opened(self._billing_reader if billing else self._reader)
        async with self._billing_lock if billing else self._read_lock:
            try:
                await conn.execute("BEGIN")
                yield conn
            except sqlite3.Error as exc:
                raise StoreError(f"{self._path}: {exc}") from exc
            finally:
                await rollback(conn)  # read-only: ending the snapshot is all it does

    async def _read(self, sql: str, params: Iterable[Any] = ()) -> Iterable[sqlite3.Row]:
        conn = opened(self._reader)
        async with self._read_lock:
            try:
                return await conn.execute_fetchall(sql, params)
            except sqlite3.Error as exc:
                raise StoreError(f"{self._path}: {exc}") from exc


def _in_transaction(
    conn: sqlite3.Connection, fn: Callable[Concatenate[sqlite3.Connection, P], T], /,
    *args: P.args, **kwargs: P.kwargs,
) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args, **kwargs)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # SQLite already rolled back (e.g. after a full disk)
                _log.debug("rollback after a failed transaction also failed", exc_info=True)
        raise
    return result


async def run_in_thread(
    conn: aiosqlite.Connection, fn: Callable[Concatenate[sqlite3.Connection, P], T], /,
    *args: P.args, **kwargs: P.kwargs,
) -> T:
    """`fn(the sqlite3 connection, *args)` on the connection's own thread, after the work
    queued before it. aiosqlite runs each statement that way but has no public call for a
    function of several statements; `_execute` is the one its own methods use (0.17-0.22)."""
    return cast(T, await conn._execute(fn, conn._conn, *args, **kwargs))  # type: ignore[no-untyped-call]


def opened(conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
    """`conn`; StoreError when the store is not open."""
    if conn is None:
        raise StoreError("the store is not open")
    return conn


async def connect(path: str, pragmas: Iterable[str]) -> aiosqlite.Connection:
    """A connection without implicit transactions (each is explicit and short)."""
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        for pragma in pragmas:
            await conn.execute(pragma)
    except BaseException:
        await conn.close()
        raise
    return conn


async def rollback(conn: aiosqlite.Connection) -> None:
    """End the open transaction, if any, without raising."""
    if conn.in_transaction:
        try:
            await conn.execute("ROLLBACK")
        except sqlite3.Error:  # SQLite already rolled back (e.g. after a full disk)
            _log.debug("rollback after a failed transaction also failed", exc_info=True)


async def scalar(conn: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> int:
    """The integer the query yields (MAX over an index or the rowid: a seek); 0 for NULL."""
    rows = await conn.execute_fetchall(sql, params)
    return int(next(iter(rows))[0] or 0)


def aggregate_row(row: Sequence[Any]) -> Aggregate:
    """An Aggregate from (count, value, last_ts_ms, last_seq) columns."""
    return Aggregate(row[0], Decimal(row[1]), row[2], row[3])
