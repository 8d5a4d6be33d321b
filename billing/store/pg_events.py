"""Event rows of the PostgreSQL store: statements over a given connection.

PostgresStore chooses the connection (the append's transaction for writes); each read's
promise is the `Store` method's of the same name.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import cast

import asyncpg  # type: ignore[import-untyped]

from billing.events import Source, StoredEvent, UsageEvent
from billing.store.base import decode_metadata, encode_metadata
from billing.store.epochs import literal_bounds, pg_in_epochs
from billing.store.pg_connection import Connection, Row

_COLUMNS = (
    "seq", "event_id", "customer_id", "event_name", "timestamp_ms", "metadata", "source",
    "ingested_at_ms",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM events"


async def known_ids(conn: Connection, event_ids: Collection[str]) -> set[str]:
    """The ids among `event_ids` that are stored."""
    rows = await conn.fetch(
        "SELECT event_id FROM events WHERE event_id = ANY($1::text[])", list(event_ids)
    )
    return {row[0] for row in rows}


async def insert(
    conn: Connection, events: Sequence[UsageEvent], first_seq: int, ingested_at_ms: int
) -> bool:
    """Store the events (distinct ids), numbered from `first_seq` in input order, by binary
    COPY; False (nothing stored) when one of them is stored already.

    Proxy events never are and ingested ones seldom: trying first and probing only after a
    refusal saves the probe of every id on every append. A savepoint keeps the caller's
    transaction usable after the refusal.
    """
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("events", columns=_COLUMNS, records=(
                (seq, e.event_id, e.customer_id, e.event_name, e.timestamp_ms,
                 encode_metadata(e.metadata), e.source, ingested_at_ms)
                for seq, e in enumerate(events, first_seq)
            ))
    except asyncpg.UniqueViolationError:
        return False
    return True


async def get(conn: Connection, event_id: str) -> StoredEvent | None:
    row = await conn.fetchrow(f"{_SELECT} WHERE event_id = $1", event_id)
    return None if row is None else _stored_event(row)


async def page(
    conn: Connection,
    *,
    customer_id: str | None,
    event_names: Sequence[str] | None,
    start_ms: int | None,
    end_ms: int | None,
    limit: int,
    offset: int,
) -> list[StoredEvent]:
    if event_names is not None and not event_names:
        return []
    conditions = {
        "customer_id = $%d": customer_id,
        "event_name = ANY($%d::text[])": None if event_names is None else list(event_names),
        "timestamp_ms >= $%d": start_ms,
        "timestamp_ms < $%d": end_ms,
    }
    used = [(sql, value) for sql, value in conditions.items() if value is not None]
    where = " AND ".join(sql % n for n, (sql, _) in enumerate(used, 1)) or "true"
    if customer_id is not None:  # the index serves a customer's events epoch by epoch
        where += " AND " + pg_in_epochs("events", *literal_bounds(start_ms, end_ms))
    rows = await conn.fetch(
        f"{_SELECT} WHERE {where} ORDER BY timestamp_ms DESC, seq DESC"
        f" LIMIT ${len(used) + 1} OFFSET ${len(used) + 2}",
        *(value for _, value in used), limit, offset,
    )
    return [_stored_event(row) for row in rows]


def _stored_event(row: Row) -> StoredEvent:
    seq, event_id, customer_id, event_name, ts_ms, metadata, source, ingested_at_ms = row
    event = UsageEvent(event_id, customer_id, event_name, ts_ms, decode_metadata(metadata),
                       cast(Source, source))
    return StoredEvent(event, seq, ingested_at_ms)
