"""Versioned schema migrations of the SQLite store (billing/store/migrations/NNNN_name.sql).

Each migration runs in its own transaction together with its row in `schema_migrations`,
so a crash never leaves a half-applied version; a file holding a version newer than this
code knows is refused before anything is touched.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterable
from importlib import resources

import aiosqlite

from billing.store.base import StoreError
from billing.store.sqlite_conn import rollback, scalar

# A child of the engine's logger, so the engine's log level and handlers apply to it.
_log = logging.getLogger("billing.store.sqlite.migrate")
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of the packaged migration files, in version order."""
    found = []
    for entry in (resources.files("billing.store") / "migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    return sorted(found)


async def migrate(conn: aiosqlite.Connection, now_ms: int) -> None:
    """Apply the migrations not applied yet, each in its own transaction with its record.

    Raises StoreError when the file records a version this code does not know (a newer
    meterproxy wrote it); sqlite3.Error when a migration fails (it is rolled back).
    """
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY,"
        " name TEXT NOT NULL, applied_at_ms INTEGER NOT NULL) STRICT"
    )
    known = migrations()
    newest = await scalar(conn, "SELECT MAX(version) FROM schema_migrations")
    if known and newest > known[-1][0]:  # leave a newer meterproxy's file untouched
        raise StoreError(f"the database has schema version {newest}, newer than this meterproxy")
    for version, name, sql in known:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Checked inside the transaction: another process may have just applied it.
            if not await conn.execute_fetchall(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
            ):
                for statement in _statements(sql):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, now_ms)
                )
                _log.info("applied schema migration %04d_%s", version, name)
            await conn.execute("COMMIT")
        except BaseException:
            await rollback(conn)
            raise


def _statements(script: str) -> Iterable[str]:
    """Split a migration into statements (executescript would commit our transaction)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending  # trailing comments run as a no-op; a cut-off statement fails loudly
