"""The two store engines behind one test-side interface, so that one suite runs on both.

A `Backend` hands out fresh locations (an SQLite file in a directory, or a new PostgreSQL
database on the machine's cluster), opens stores there, and reads or changes their tables
behind the store's back with plain SQL (the same table and column names in both engines; the
SQL a test passes carries no parameters, so it is valid in both dialects). `dispose` removes
every database it created.

PostgreSQL: METERPROXY_TEST_PG names an admin URL (default: the local cluster's postgres
database, trust auth); each location is a database `test_<random hex>`.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from billing.meters import Meter
from billing.store.base import Store
from billing.store.migrate import migrations as sqlite_migrations
from billing.store.pg_schema import packaged_migrations
from billing.store.postgres import PostgresStore
from billing.store.sqlite import SqliteStore

ADMIN_URL = os.environ.get(
    "METERPROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ENGINES = ("sqlite", "postgres")


class Backend(Protocol):
    engine: str
    migrations: str  # the package folder of the engine's migration files

    async def location(self) -> str:
        """A fresh, empty place for a store."""

    def store(
        self, location: str, meters: Sequence[Meter], bucket_ms: int, clock: Callable[[], int]
    ) -> Store: ...

    async def rows(self, location: str, sql: str) -> list[tuple[Any, ...]]:
        """What the query returns, read through a connection of its own."""

    async def execute(self, location: str, sql: str) -> None: ...

    async def at_version(self, location: str, version: int) -> None:
        """Apply the engine's packaged migrations up to `version` at the empty `location`,
        each recorded as the store records it: a store of the release that stopped there."""

    async def contents(self, location: str) -> bytes:
        """Everything the engine keeps for the location, as bytes to search."""

    async def dispose(self) -> None: ...


class SqliteBackend:
    engine = "sqlite"
    migrations = "migrations"

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._made = 0

    async def location(self) -> str:
        self._made += 1
        folder = self._directory / f"store{self._made}"
        folder.mkdir()
        return str(folder / "events.db")

    def store(
        self, location: str, meters: Sequence[Meter], bucket_ms: int, clock: Callable[[], int]
    ) -> Store:
        return SqliteStore(location, meters, bucket_ms, clock=clock)

    async def rows(self, location: str, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(location) as conn:
            return conn.execute(sql).fetchall()

    async def execute(self, location: str, sql: str) -> None:
        with sqlite3.connect(location) as conn:
            conn.execute(sql)

    async def at_version(self, location: str, version: int) -> None:
        with sqlite3.connect(location) as conn:
            conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                         " name TEXT NOT NULL, applied_at_ms INTEGER NOT NULL) STRICT")
            for number, name, sql in sqlite_migrations()[:version]:
                conn.executescript(sql)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (number, name))

    async def contents(self, location: str) -> bytes:
        # The database with its WAL and shared-memory files.
        return b"".join(p.read_bytes() for p in sorted(Path(location).parent.iterdir()))

    async def dispose(self) -> None:
        pass  # the directory is the test's tmp_path


class PostgresBackend:
    engine = "postgres"
    migrations = "pg_migrations"

    def __init__(self, admin_url: str = ADMIN_URL) -> None:
        self._admin_url = admin_url
        self._databases: list[str] = []

    async def location(self, options: str = "") -> str:
        """A new database, made with CREATE DATABASE's `options` (default: the cluster's)."""
        name = f"test_{uuid.uuid4().hex}"
        await self._admin(f"CREATE DATABASE {name} {options}")
        self._databases.append(name)
        return urlunsplit(urlsplit(self._admin_url)._replace(path=f"/{name}"))

    def store(
        self, location: str, meters: Sequence[Meter], bucket_ms: int, clock: Callable[[], int]
    ) -> Store:
        return PostgresStore(location, meters, bucket_ms, clock=clock)

    async def rows(self, location: str, sql: str) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(location)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    async def execute(self, location: str, sql: str) -> None:
        conn = await asyncpg.connect(location)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def at_version(self, location: str, version: int) -> None:
        await self.execute(location, "CREATE TABLE schema_migrations (version integer PRIMARY"
                                     " KEY, name text NOT NULL, applied_at_ms bigint NOT NULL)")
        for number, name, sql in packaged_migrations()[:version]:
            await self.execute(location, sql)
            await self.execute(
                location, f"INSERT INTO schema_migrations VALUES ({number}, '{name}', 0)")

    async def contents(self, location: str) -> bytes:
        # Every row of every table as PostgreSQL's text form (bytea as \x hex digits).
        tables = await self.rows(
            location,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        )
        found = []
        for (table,) in tables:
            found += await self.rows(location, f'SELECT t::text FROM "{table}" AS t')
        return "\n".join(text for (text,) in found).encode()

    async def dispose(self) -> None:
        for name in self._databases:
            await self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self._databases.clear()

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(self._admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


def make_backend(engine: str, directory: Path) -> Backend:
    """The backend of `engine` ("sqlite" | "postgres"); SQLite files go in `directory`."""
    if engine == "sqlite":
        return SqliteBackend(directory)
    return PostgresBackend()
