"""Customers and API keys of the PostgreSQL store: statements over a given connection.

PostgresStore chooses the connection (a transaction for writes); these functions only speak
SQL, so each promise is the `Store` method's of the same name.
"""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg  # type: ignore[import-untyped]

from billing.store.base import ApiKey, Customer, DuplicateKey
from billing.store.pg_connection import Connection

_CUSTOMER_COLUMNS = "id, created_at_ms, plan, deleted_at_ms"
_KEY_COLUMNS = "key_id, customer_id, prefix, created_at_ms, revoked_at_ms"
_INSERT_CUSTOMER = (
    "INSERT INTO customers (id, created_at_ms) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING"
)


async def insert_missing(conn: Connection, created_at_ms: Mapping[str, int]) -> None:
    """Create the customers not stored yet, each at its given time (one statement)."""
    await conn.execute(
        "INSERT INTO customers (id, created_at_ms)"
        " SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT (id) DO NOTHING",
        list(created_at_ms), list(created_at_ms.values()),
    )


async def ensure(conn: Connection, customer_id: str, now_ms: int) -> Customer:
    await conn.execute(_INSERT_CUSTOMER, customer_id, now_ms)
    found = await get(conn, customer_id)
    assert found is not None  # inserted or already there, in this transaction
    return found


async def get(conn: Connection, customer_id: str) -> Customer | None:
    row = await conn.fetchrow(
        f"SELECT {_CUSTOMER_COLUMNS} FROM customers WHERE id = $1", customer_id
    )
    return None if row is None else Customer(*row)


async def page(conn: Connection, limit: int, offset: int) -> list[Customer]:
    rows = await conn.fetch(
        f"SELECT {_CUSTOMER_COLUMNS} FROM customers ORDER BY id LIMIT $1 OFFSET $2",
        limit, offset,
    )
    return [Customer(*row) for row in rows]


async def add_key(
    conn: Connection, customer_id: str, key_id: str, key_hash: bytes, prefix: str, now_ms: int
) -> ApiKey:
    """Raises DuplicateKey when the id or the hash is stored (the transaction is then
    aborted: the caller rolls it back)."""
    await conn.execute(_INSERT_CUSTOMER, customer_id, now_ms)
    try:
        await conn.execute(
            "INSERT INTO api_keys (key_id, customer_id, key_hash, prefix, created_at_ms)"
            " VALUES ($1, $2, $3, $4, $5)",
            key_id, customer_id, key_hash, prefix, now_ms,
        )
    except asyncpg.UniqueViolationError as exc:
        raise DuplicateKey(f"key {key_id!r} or its secret is already stored") from exc
    await _bump_key_version(conn)
    return ApiKey(key_id, customer_id, prefix, now_ms, None)


async def revoke_key(conn: Connection, customer_id: str, key_id: str, now_ms: int) -> bool:
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at_ms = $1"
        " WHERE key_id = $2 AND customer_id = $3 AND revoked_at_ms IS NULL",
        now_ms, key_id, customer_id,
    )
    revoked = status == "UPDATE 1"  # asyncpg returns the command tag
    if revoked:
        await _bump_key_version(conn)
    return revoked


async def keys_of(conn: Connection, customer_id: str) -> list[ApiKey]:
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE customer_id = $1"
        " ORDER BY created_at_ms, key_id",
        customer_id,
    )
    return [ApiKey(*row) for row in rows]


async def active_key_hashes(conn: Connection) -> dict[bytes, tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT key_hash, customer_id, key_id FROM api_keys WHERE revoked_at_ms IS NULL"
    )
    return {bytes(row[0]): (row[1], row[2]) for row in rows}


async def _bump_key_version(conn: Connection) -> None:
    await conn.execute("UPDATE key_version SET version = version + 1")
