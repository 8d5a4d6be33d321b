"""PostgreSQL plumbing of the store: the connection pool, typed views of asyncpg, and the
translation of driver errors into `StoreError`.

asyncpg ships no type hints; `Connection` and `Pool` below declare the few methods the store
calls, so that the rest of the engine is checked.

Exceptions:
    StoreUnreachable (StoreError) -- PostgreSQL cannot be reached or the connection broke.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from billing.store.base import StoreError

Row = Sequence[Any]  # an asyncpg Record: indexable by position, iterable


class StoreUnreachable(StoreError):
    """PostgreSQL could not be reached, or the connection broke during the operation.

    Unlike other StoreErrors, a commit that was in flight may have taken effect: retry only
    what is idempotent (an append is, by event_id). The outage spool catches exactly this.
    """


class Connection(Protocol):
    """The part of asyncpg.Connection the store uses."""

    async def execute(self, query: str, *args: Any) -> str: ...

    async def fetch(self, query: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, query: str, *args: Any) -> Row | None: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

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
    url: str, size: int, connect_timeout_s: float, command_timeout_s: float
) -> Pool:
    """A pool of at most `size` connections (one opened now, the rest on demand).

    Raises StoreUnreachable when the server cannot be reached, StoreError when it refuses
    (bad credentials, unknown database).
    """
    with translated(redact(url)):
        pool: Pool = await asyncpg.create_pool(
            url, min_size=1, max_size=size, timeout=connect_timeout_s,
            command_timeout=command_timeout_s,
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


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 address
    netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
