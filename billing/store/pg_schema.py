"""Versioned schema migrations of the PostgreSQL store, safe when several replicas start at once.

The migration files are billing/store/pg_migrations/NNNN_name.sql (PostgreSQL's own series,
numbered independently of SQLite's). Whoever holds the session-level advisory lock
`SCHEMA_LOCK` migrates; the others wait for it, then find every version recorded in
`schema_migrations` and apply nothing. Each migration runs in one transaction with its record
(PostgreSQL DDL is transactional), so a replica dying mid-migration leaves no half-applied
version, and the server frees its lock with its session.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from billing.store.base import StoreError
from billing.store.pg_connection import Connection

_log = logging.getLogger(__name__)

# Any fixed bigint names the lock; this one spells "mp:schem" so that it reads in pg_locks.
SCHEMA_LOCK = int.from_bytes(b"mp:schem", "big")
# Waiting for another replica's migration, and a migration rewriting a large table, may both
# outlast the pool's statement timeout (made for appends and reads).
_LONG_TIMEOUT_S = 24 * 3600.0
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@asynccontextmanager
async def schema_lock(conn: Connection) -> AsyncIterator[None]:
    """Hold the fleet-wide schema lock on this session for the block (waits for it)."""
    await conn.execute("SELECT pg_advisory_lock($1)", SCHEMA_LOCK, timeout=_LONG_TIMEOUT_S)
    try:
        yield
    finally:
        if not conn.is_closed():  # a lost session has already dropped its locks
            await conn.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK)


def packaged_migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of the packaged PostgreSQL migrations, in version order."""
    found = []
    for entry in (resources.files("billing.store") / "pg_migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    return sorted(found)


async def migrate(conn: Connection, now_ms: int) -> None:
    """Apply the migrations not applied yet; call it under `schema_lock`.

    Raises StoreError when the database records a version this code does not know (a newer
    meterproxy migrated it); nothing is applied then. Driver errors propagate untranslated.
    """
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
        " name text NOT NULL, applied_at_ms bigint NOT NULL)"
    )
    known = packaged_migrations()
    newest = await conn.fetchval("SELECT max(version) FROM schema_migrations") or 0
    if known and newest > known[-1][0]:  # leave a newer meterproxy's schema untouched
        raise StoreError(f"the database has schema version {newest}, newer than this meterproxy")
    for version, name, sql in known:
        async with conn.transaction():
            if await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", version):
                continue
            # No arguments: the simple protocol runs every statement of the file.
            await conn.execute(sql, timeout=_LONG_TIMEOUT_S)
            await conn.execute(
                "INSERT INTO schema_migrations VALUES ($1, $2, $3)", version, name, now_ms
            )
        _log.info("applied schema migration %04d_%s", version, name)
