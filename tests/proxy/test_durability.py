"""`proxy.durability: strict`: a complete response means its events are on disk."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import Running, StartProxy, write_config
from tests.proxy.upstream import Upstream

CUSTOMER = {"X-Customer-Id": "acme"}


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, TestServer]:
    up = Upstream()
    return up, await aiohttp_server(up.app())


def on_disk(running: Running) -> int:
    with sqlite3.connect(running.mp.config.storage.path) as db:
        count: int = db.execute("SELECT count(*) FROM events").fetchone()[0]
        return count


async def start_strict(start_proxy: StartProxy, server: TestServer, tmp_path: Any) -> Running:
    from proxy.config import load_config

    path = write_config(
        tmp_path, f"http://127.0.0.1:{server.port}", proxy_extra="durability: strict"
    )
    # A flush interval no test waits for: only strict mode can put the events on disk in time.
    path.write_text(path.read_text().replace("flush_interval: 10ms", "flush_interval: 1h"))
    return await start_proxy("", config=load_config(path))


@pytest.mark.parametrize("path", ["/v1/echo", "/v1/bytes/300000", "/v1/status/204"])
async def test_events_are_stored_before_the_response_completes(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy, tmp_path: Any, path: str
) -> None:
    _, server = upstream
    running = await start_strict(start_proxy, server, tmp_path)
    for n in range(1, 4):
        async with running.session.get(running.proxy_url + path, headers=CUSTOMER) as r:
            await r.read()
        assert on_disk(running) == 2 * n if path != "/v1/status/204" else n + n


async def test_a_store_that_cannot_take_the_events_cuts_the_response(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy, tmp_path: Any
) -> None:
    up, server = upstream
    running = await start_strict(start_proxy, server, tmp_path)

    async def call() -> bytes:
        async with running.session.get(running.proxy_url + "/v1/sse-gated", headers=CUSTOMER) as r:
            return await r.read()

    gated = asyncio.ensure_future(call())
    while not up.seen:  # noqa: ASYNC110 - admitted: the upstream holds the stream on its gate
        await asyncio.sleep(0.005)
    await running.mp.writer.close(timeout=1)  # from now on the writer refuses events
    up.gate.set()
    with pytest.raises(aiohttp.ClientPayloadError):
        await gated
    async with running.session.get(running.proxy_url + "/v1/echo", headers=CUSTOMER) as r:
        assert r.status == 503  # new exchanges are refused before the upstream is called
        assert r.headers["Retry-After"] == "5"
