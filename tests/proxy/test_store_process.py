"""proxy/store_process.py: appends in a child process, against real SQLite files (and an
unreachable PostgreSQL), with the child killed, signalled and refusing events."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing.events import UsageEvent
from billing.meters import Aggregate, Meter
from billing.store.base import AggregateDeltas, AppendResult, StoreError, is_transient
from billing.store.pg_connection import StoreUnreachable
from billing.store.sqlite import SqliteStore
from proxy.config import load_config
from proxy.store_process import AppendProcess, ChildSpec, decode_result, encode_result
from tests.conftest import StartProxy, write_config
from tests.proxy.upstream import Upstream

HOUR_MS = 3_600_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
METERS = (
    Meter(name="calls", event_name="api.call", aggregation="count", key=None, filter=None,
          measurement_unit=None),
    Meter(name="bytes", event_name="api.call", aggregation="sum", key="bytes", filter=None,
          measurement_unit=None),
)


def events(prefix: str, n: int, customer: str = "cus_1") -> list[UsageEvent]:
    return [UsageEvent(f"{prefix}{i}", customer, "api.call", T0 + i, {"bytes": 10 + i}, "proxy")
            for i in range(n)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """The parent's store: opened first (migrated), as MeterProxy opens it."""
    opened = SqliteStore(str(tmp_path / "p.db"), METERS, HOUR_MS)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def child(tmp_path: Path, store: SqliteStore) -> AsyncIterator[AppendProcess]:
    process = AppendProcess(ChildSpec(str(tmp_path / "p.db"), "", METERS, HOUR_MS))
    await process.start()
    yield process
    await process.close()


async def test_appends_run_in_the_child_and_are_stored(
    child: AppendProcess, store: SqliteStore
) -> None:
    assert child.pid is not None and child.pid != os.getpid()
    result = await child.append(events("e", 3), T0 + 10)
    assert result.stored == (True, True, True)
    assert result.watermark == T0 + 10
    assert result.deltas is not None
    assert result.deltas.by_meter["bytes"][("cus_1", T0)] == Aggregate(3, Decimal(33), T0 + 2, 3)
    again = await child.append(events("e", 2), T0 + 20)  # the same ids: duplicates
    assert again.stored == (False, False)
    stored = await store.get_event("e1")
    assert stored is not None and stored.event.metadata == {"bytes": 11}


async def test_a_killed_child_fails_one_append_transiently_and_is_replaced(
    child: AppendProcess, store: SqliteStore
) -> None:
    first = child.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    with pytest.raises(StoreError) as failed:
        await child.append(events("a", 2), T0 + 10)
    assert is_transient(failed.value)
    result = await child.append(events("a", 2), T0 + 20)  # the writer's retry
    assert result.stored == (True, True)
    assert child.pid not in (None, first)
    assert await store.get_event("a1") is not None


async def test_the_child_outlives_sigterm_and_sigint(child: AppendProcess) -> None:
    """A signal to the process group must not cut a flush short: the parent ends it."""
    assert child.pid is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        os.kill(child.pid, sig)
    await asyncio.sleep(0.2)
    assert (await child.append(events("s", 1), T0 + 5)).stored == (True,)


async def test_a_refused_event_is_a_data_error_not_a_transient_one(
    child: AppendProcess, tmp_path: Path
) -> None:
    with sqlite3.connect(tmp_path / "p.db") as conn:
        conn.execute("CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.event_id = 'p1'"
                     " BEGIN SELECT RAISE(ABORT, 'poison'); END")
    with pytest.raises(StoreError) as refused:
        await child.append(events("p", 3), T0 + 10)
    assert "poison" in str(refused.value)
    assert not is_transient(refused.value)
    assert not isinstance(refused.value, StoreUnreachable)
    assert (await child.append(events("q", 1), T0 + 20)).stored == (True,)  # still serving


async def test_close_ends_the_child(tmp_path: Path, store: SqliteStore) -> None:
    process = AppendProcess(ChildSpec(str(tmp_path / "p.db"), "", METERS, HOUR_MS))
    await process.start()
    pid = process.pid
    assert pid is not None
    await process.close()
    assert process.pid is None
    with pytest.raises(ProcessLookupError):  # exited and reaped
        os.kill(pid, 0)


async def test_an_unreachable_postgresql_stays_unreachable_and_transient(
    tmp_path: Path,
) -> None:
    """Fleet mode: the spool catches StoreUnreachable, so the kind must survive the trip."""
    url = "postgresql://postgres@127.0.0.1:9/nowhere"  # the discard port: refused
    process = AppendProcess(ChildSpec(str(tmp_path / "spool.db"), url, METERS, HOUR_MS))
    try:
        with pytest.raises(StoreUnreachable) as failed:
            await process.start()
        assert is_transient(failed.value)
        with pytest.raises(StoreUnreachable):  # the child lives on and tries again
            await process.append(events("u", 1), T0)
    finally:
        await process.close()


def test_results_travel_as_plain_values() -> None:
    deltas = AggregateDeltas(5, 9, HOUR_MS, {
        "bytes": {("cus_1", T0): Aggregate(2, Decimal("1E+3"), T0 + 1, 7),
                  ("cus_2", T0 - HOUR_MS): Aggregate(1, Decimal("-0.50"), T0 - 5, 3)},
        "calls": {("cus_1", T0): Aggregate(2, Decimal(2), T0 + 1, 7)},
    })
    for result in (AppendResult((True, False), {("bytes", "missing"): 1}, 9, deltas),
                   AppendResult((False,), {}, 4)):
        decoded = decode_result(encode_result(result))
        assert decoded == result
        if decoded.deltas is not None:  # exact decimals keep their exponent
            assert str(decoded.deltas.by_meter["bytes"][("cus_1", T0)].value) == "1E+3"


# ------------------------------------------------------------ in MeterProxy


@pytest.mark.parametrize("place", ["process", "thread"])
async def test_either_writer_place_stores_every_event(
    aiohttp_server: Any, start_proxy: StartProxy, tmp_path: Path, place: str
) -> None:
    """`storage.writer` moves where appends run, not what is stored (strict mode too)."""
    server = await aiohttp_server(Upstream().app())
    path = write_config(tmp_path, f"http://127.0.0.1:{server.port}",
                        proxy_extra="durability: strict")
    path.write_text(path.read_text().replace("flush_interval: 10ms",
                                             f"flush_interval: 10ms\n  writer: {place}"))
    running = await start_proxy("", config=load_config(path))
    assert running.mp.config.storage.writer == place
    store_process = running.mp.store_process
    assert (store_process is not None and store_process.pid is not None) == (place == "process")
    for _ in range(3):
        async with running.session.get(running.proxy_url + "/v1/echo",
                                       headers={"X-Customer-Id": "acme"}) as response:
            assert response.status == 200
            await response.read()
    with sqlite3.connect(tmp_path / "meterproxy.db") as db:  # strict: on disk already
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 6
    names = sorted(e["event_name"] for e in await running.events())
    assert names == ["api.call"] * 3 + ["bandwidth"] * 3


async def test_an_append_cancelled_mid_exchange_ends_its_child(
    child: AppendProcess, store: SqliteStore
) -> None:
    """Its answer would otherwise be read as the next append's."""
    first = child.pid
    task = asyncio.ensure_future(child.append(events("c", 500), T0 + 10))
    await asyncio.sleep(0)  # the request is on its way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = await child.append(events("d", 2), T0 + 20)
    assert result.stored == (True, True)  # a new child's own answer
    assert child.pid not in (None, first)


async def test_what_the_store_prints_does_not_break_the_protocol(tmp_path: Path) -> None:
    """stdout carries the answers; in the child it points at stderr for everything else."""
    script = tmp_path / "noisy_child.py"
    script.write_text(
        "import runpy, sys\n"
        "from billing.store.sqlite import SqliteStore\n"
        "append = SqliteStore.append\n"
        "async def noisy(self, events, now_ms):\n"
        "    print('noise on stdout', flush=True)\n"
        "    return await append(self, events, now_ms)\n"
        "SqliteStore.append = noisy\n"
        "sys.exit(runpy.run_module('proxy.store_process', run_name='__main__'))\n"
    )
    spec = ChildSpec(str(tmp_path / "p.db"), "", METERS, HOUR_MS)
    process = AppendProcess(spec, command=(sys.executable, str(script)))
    try:
        async with asyncio.timeout(60):  # noise read as a frame header waits for GBs
            await process.start()
            for n in range(3):
                result = await process.append(events(f"n{n}", 2), T0 + n)
                assert result.stored == (True, True)
    finally:
        await process.close()
