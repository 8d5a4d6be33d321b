"""The engine and ledger tests run on both store engines.

The tests of the modules in ENGINE_MODULES open their stores through
`tests.billing.test_engine_kit.open_billing`, which names an SQLite file. Parametrized by
`store_engine`, each of them also runs with that name standing for `PostgresAtPath` instead:
the real PostgreSQL engine on a database of the machine's cluster named after the path
(created on first open, so that reopening a path reopens its database), dropped after the
test. SQLITE_ONLY lists the tests that read the SQLite file itself; tests/store has their
PostgreSQL counterparts.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import pytest

from billing.events import now_ms
from billing.meters import Meter
from billing.store.postgres import PostgresStore
from tests.billing import test_engine_kit
from tests.store.backends import ADMIN_URL

ENGINES = ("sqlite", "postgres")
ENGINE_MODULES = frozenset({
    "tests.billing.test_engine", "tests.billing.test_engine_properties",
    "tests.billing.test_engine_scheduler", "tests.billing.test_engine_store",
})
SQLITE_ONLY = frozenset({
    "test_the_sqlite_store_implements_the_whole_interface",
    "test_the_schema_keeps_final_statements_and_their_burns",
    "test_a_draft_is_replaced_with_its_burns_and_never_by_an_older_cutoff",
    "test_migration_0002_keeps_the_plans_already_set",
    "test_late_usage_is_read_through_the_partial_index",
    "test_a_run_cut_short_is_completed_by_the_next_with_the_same_numbers",
})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if (metafunc.module.__name__ in ENGINE_MODULES
            and metafunc.function.__name__ not in SQLITE_ONLY
            and "store_engine" in metafunc.fixturenames):
        metafunc.parametrize("store_engine", ENGINES, indirect=True)


class PostgresAtPath(PostgresStore):
    """A PostgresStore where the kit builds SqliteStore(path, meters, bucket_ms, clock=...):
    `path` names a database of the cluster, created by the first open."""

    created: list[str] = []  # databases made by every instance, for the fixture to drop

    def __init__(self, path: str, meters: Sequence[Meter], bucket_ms: int, *,
                 clock: Callable[[], int] = now_ms) -> None:
        self._database = "test_" + hashlib.sha256(path.encode()).hexdigest()[:24]
        super().__init__(_url_of(self._database), meters, bucket_ms, clock=clock)

    async def open(self, *, rebuild_all: bool = False) -> None:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                        self._database):
                await admin.execute(f"CREATE DATABASE {self._database}")
                self.created.append(self._database)
        finally:
            await admin.close()
        await super().open(rebuild_all=rebuild_all)


@pytest.fixture(autouse=True)
def store_engine(request: pytest.FixtureRequest,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The engine behind the kit's stores: "sqlite" unless parametrized (see the module)."""
    engine: str = getattr(request, "param", "sqlite")
    if engine == "postgres":
        monkeypatch.setattr(test_engine_kit, "SqliteStore", PostgresAtPath)
    yield engine
    made, PostgresAtPath.created[:] = list(PostgresAtPath.created), []
    if made:
        _in_own_loop(_drop(made))


def _url_of(database: str) -> str:
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{database}"))


async def _drop(databases: Sequence[str]) -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        for name in databases:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


def _in_own_loop(coro: Coroutine[Any, Any, None]) -> None:
    """Run `coro` to completion on a thread of its own: this thread's event loop (pytest's,
    or a test's asyncio.run) must not be disturbed."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
