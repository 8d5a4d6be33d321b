"""The last API keys a fleet replica read from PostgreSQL, kept in its local spool file.

A replica that restarts while PostgreSQL is unreachable cannot read the keys from it; without
them every client presenting a key would get 401, and proxying would depend on PostgreSQL
after all. So each time the replica loads the active keys (hashes only, never a secret) it
also writes them here, and a start during an outage reads them back. Key changes made while
PostgreSQL is away cannot happen anyway (the admin API needs it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import aiosqlite

from billing.store.base import StoreError

_SCHEMA = """
    CREATE TABLE IF NOT EXISTS known_keys (
        key_hash    BLOB PRIMARY KEY,
        customer_id TEXT NOT NULL,
        key_id      TEXT NOT NULL
    ) STRICT"""

KeyHashes = Mapping[bytes, tuple[str, str]]  # hash -> (customer_id, key_id)


class KeyCache:
    """The active key hashes last read, in the SQLite file at `path` (the spool's own file:
    a table of its own). Every method raises StoreError when the file fails."""

    def __init__(self, path: str) -> None:
        self._path = path

    async def save(self, hashes: KeyHashes) -> None:
        """Replace the kept keys with `hashes`, durably."""
        async with self._connected() as conn:
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute("DELETE FROM known_keys")
            await conn.executemany("INSERT INTO known_keys VALUES (?, ?, ?)",
                                   [(h, c, k) for h, (c, k) in hashes.items()])
            await conn.execute("COMMIT")

    async def load(self) -> dict[bytes, tuple[str, str]]:
        """The keys last saved; empty when none ever were."""
        async with self._connected() as conn:
            rows = await conn.execute_fetchall("SELECT key_hash, customer_id, key_id"
                                               " FROM known_keys")
        return {bytes(row[0]): (row[1], row[2]) for row in rows}

    @asynccontextmanager
    async def _connected(self) -> AsyncIterator[aiosqlite.Connection]:
        """A short-lived connection (saves happen only when keys change); closing it drops
        a transaction left open; sqlite errors as StoreError."""
        try:
            conn = await aiosqlite.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: {exc}") from exc
        try:
            await conn.execute("PRAGMA busy_timeout = 10000")
            await conn.execute(_SCHEMA)
            yield conn
        except sqlite3.Error as exc:
            raise StoreError(f"{self._path}: {exc}") from exc
        finally:
            await conn.close()
