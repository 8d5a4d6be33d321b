"""PostgreSQL plumbing of the store: the connection pool, typed views of asyncpg, the
translation of driver errors into `StoreError`, and `PostgresDatabase`, the connections every
part of the engine (events, ledger) goes through.

asyncpg ships no type hints; `Connection` and `Pool` below declare the few methods the store
calls, so that the rest of the engine is checked.

Exceptions:
    StoreUnreachable (StoreError) -- PostgreSQL cannot be reached or the connection broke.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any, Protocol

import asyncpg  # type: ignore[import-untyped]

from billing.store.base import StoreError
from billing.store.pg_url import redact

Row = Sequence[Any]  # an asyncpg Record: indexable by position, iterable


class StoreUnreachable(StoreError):
    """PostgreSQL could not be reached, or the connection broke during the operation.

    Unlike other StoreErrors, a commit that was in flight may have taken effect: retry only
    what is idempotent (an append is, by event_id). The outage spool catches exactly this.
    """


class Connection(Protocol):
    """The part of asyncpg.Connection the store uses."""

    # asyncpg's own signature: on timeout the server cancels the statement.
    async def execute(
        self, query: str, *args: Any, timeout: float | None = None  # noqa: ASYNC109
    ) -> str: ...

    async def fetch(self, query: str, *args: Any) -> list[Row]: ...

    async def copy_records_to_table(
        self, table_name: str, *, records: Iterable[Sequence[Any]],
        columns: Sequence[str] | None = None,
    ) -> str: ...

    async def fetchrow(self, query: str, *args: Any) -> Row | None: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def executemany(self, command: str, args: Iterable[Sequence[Any]]) -> None: ...

    def transaction(
        self, *, isolation: str | None = None, readonly: bool = False
    ) -> AbstractAsyncContextManager[Any]: ...

    def is_closed(self) -> bool: ...


class Pool(Protocol):
    """The part of asyncpg.Pool the store uses."""

    def acquire(self, *, timeout: float | None = None) -> AbstractAsyncContextManager[Connection]:
        ...

    async def close(self) -> None: ...


async def create_pool(
    url: str,
    size: int,
    connect_timeout_s: float,
    command_timeout_s: float,
    init: Callable[[Connection], Awaitable[None]],
) -> Pool:
    """A pool of at most `size` connections, each opened on demand (no background reconnects
    while the server is away) and prepared by `init` once.

    Connects to nothing yet: connection errors surface on acquire.
    """
    pool: Pool = await asyncpg.create_pool(
        url, min_size=0, max_size=size, timeout=connect_timeout_s,
        command_timeout=command_timeout_s, init=init,
        # asyncpg prepares every statement; a generic plan made while a table was still
        # empty (a nested loop over a sequential scan) stays cached as the table grows.
        server_settings={"plan_cache_mode": "force_custom_plan", "random_page_cost": "1.1"},
    )
    return pool


# Errors that mean "the server is not there (any more)", not "the server said no".
_UNREACHABLE = (
    OSError,  # refused, reset, unreachable host; TimeoutError (connect, acquire) is one too
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.AdminShutdownError,  # 57P01: the server is shutting down
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.CannotConnectNowError,  # 57P03: starting up or in recovery
    # asyncpg's protocol state breaks when the server ends a session between two statements
    # (seen after pg_terminate_backend); the pool replaces that connection.
    asyncpg.InternalClientError,
)


@contextmanager
def translated(where: str) -> Iterator[None]:
    """Re-raise driver errors of the block as StoreUnreachable or StoreError ("where: what").

    StoreErrors raised inside (DuplicateKey, ...) pass unchanged.
    """
    try:
        yield
    except StoreError:
        raise
    except _UNREACHABLE as exc:
        raise StoreUnreachable(f"{where}: {_describe(exc)}") from exc
    except asyncpg.InterfaceError as exc:
        # asyncpg reports use of a connection or pool that went away as an InterfaceError.
        unreachable = "closed" in str(exc)
        raise (StoreUnreachable if unreachable else StoreError)(f"{where}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(f"{where}: {exc}") from exc


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__  # a bare TimeoutError has no message


class PostgresDatabase:
    """The pool of one database and the ways to use it; the engine's classes build on it.

    `url` must have passed `check_url`; `where` is how messages name the database (the URL
    without its password). Connections are made by `open_pool` (the pool connects lazily).
    """

    def __init__(self, url: str, pool_size: int, connect_timeout_s: float,
                 command_timeout_s: float) -> None:
        self._url = url
        self._where = redact(url)
        self._pool_settings = (pool_size, connect_timeout_s, command_timeout_s)
        self._connect_timeout_s = connect_timeout_s
        self._pool: Pool | None = None

    async def open_pool(self, init: Callable[[Connection], Awaitable[None]]) -> None:
        """Create the pool; each new connection runs `init` once."""
        self._pool = await create_pool(self._url, *self._pool_settings, init=init)

    async def close(self) -> None:
        """Close the pool; safe to call twice or after a failed open."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection; driver errors of the block as StoreError/StoreUnreachable.
        Raises StoreError when the pool is not open."""
        if self._pool is None:
            raise StoreError("the store is not open")
        with translated(self._where):
            async with self._pool.acquire(timeout=self._connect_timeout_s) as conn:
                yield conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        """One read-committed write transaction, rolled back on any error."""
        async with self._connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Connection]:
        """Several reads that see one committed state of the database."""
        async with self._connection() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            yield conn

    async def _read(self, sql: str, *args: Any) -> list[Row]:
        async with self._connection() as conn:
            return await conn.fetch(sql, *args)
