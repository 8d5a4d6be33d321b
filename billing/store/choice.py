"""Which engine a store runs on: PostgreSQL when a URL is configured, else the SQLite file.

One place for the choice, used by the proxy (`proxy.app.store_for`) and by its store child
process (`proxy.store_process`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from billing.events import now_ms
from billing.meters import Meter
from billing.store.postgres import PostgresStore
from billing.store.sqlite import SqliteStore


def store_at(
    url: str | None, path: str, meters: Sequence[Meter], bucket_ms: int,
    clock: Callable[[], int] = now_ms,
) -> SqliteStore | PostgresStore:
    """The store on PostgreSQL at `url` when set, else on the SQLite file at `path`; not
    opened yet."""
    if url:
        return PostgresStore(url, meters, bucket_ms, clock=clock)
    return SqliteStore(path, meters, bucket_ms, clock=clock)
