"""bench/memory.py: the soak loop and the RSS sampler, against an in-process server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.fleet import Target
from bench.loadgen import AiohttpLoad
from bench.memory import peak_rss_while, soak
from bench.processes import rss_bytes

ServerFactory = Callable[..., Awaitable[TestServer]]


async def test_soak_stops_at_the_budget_and_counts_every_request(
    aiohttp_server: ServerFactory,
) -> None:
    served = [0]

    async def handle(request: web.Request) -> web.Response:
        served[0] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/v1/items", handle)
    server = await aiohttp_server(app)
    target = Target("t", str(server.make_url("")).rstrip("/"), os.getpid())
    # Far more requests than 1.5 s allows: the budget ends the soak, after one slice.
    result = await soak(AiohttpLoad(), target, 10**9, 1.5, "/v1/items")
    assert 0 < result.requests <= served[0]
    assert result.errors == 0
    assert [done for done, _ in result.rss] == [result.requests]
    assert all(rss > 0 for _, rss in result.rss)


async def test_soak_with_nothing_to_do_sends_nothing() -> None:
    target = Target("t", "http://127.0.0.1:9", os.getpid())  # never contacted
    result = await soak(AiohttpLoad(), target, 0, 10, "/")
    assert (result.requests, result.rss) == (0, ())


async def test_peak_rss_sees_memory_allocated_while_work_runs() -> None:
    held: list[bytes] = []

    async def allocate() -> None:
        await asyncio.sleep(0.1)
        held.append(os.urandom(64_000_000))  # touched pages: resident
        await asyncio.sleep(0.3)
        held.clear()

    before = rss_bytes(os.getpid())
    peak = await peak_rss_while(os.getpid(), asyncio.ensure_future(allocate()))
    assert peak >= before + 50_000_000
