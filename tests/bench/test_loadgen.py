"""bench/loadgen.py: wrk's report, and both generators against a real server."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.loadgen import (
    CUSTOMERS,
    AiohttpLoad,
    LoadGenerator,
    LoadResult,
    WrkLoad,
    customer_id,
    parse_wrk,
    wrk_version,
)

ServerFactory = Callable[..., Awaitable[TestServer]]

WRK_OUTPUT = """\
Running 4s test @ http://127.0.0.1:18080/v1/items
  1 threads and 32 connections
  13870 requests in 4.00s, 8.48MB read
BENCH {"requests": 13870, "duration_us": 4000000, "errors": 3, "p50_us": 310, "p99_us": 6780}
"""


def test_parse_wrk_reads_the_bench_line() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result == LoadResult(13870, 4.0, 3, 310.0, 6780.0)
    assert result.rps == pytest.approx(3467.5)


def test_parse_wrk_without_the_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="no BENCH line"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_version_is_the_first_two_words_of_its_banner(tmp_path: Path) -> None:
    fake = tmp_path / "wrk"
    fake.write_text('#!/bin/sh\necho "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012"\nexit 1\n')
    fake.chmod(0o755)
    assert wrk_version(str(fake)) == "wrk debian/4.1.0-3+b2"
    assert WrkLoad(str(fake)).name == "wrk debian/4.1.0-3+b2, 1 thread"


@pytest.mark.parametrize(
    ("n", "expected"), [(0, "cus_00000"), (42, "cus_00042"), (CUSTOMERS + 7, "cus_00007")]
)
def test_customer_ids_rotate_through_ten_thousand(n: int, expected: str) -> None:
    assert customer_id(n) == expected


def _recording_app(seen: list[str], status: int = 200) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-Customer-Id", ""))
        return web.Response(status=status, text="ok")

    app = web.Application()
    app.router.add_get("/v1/items", handle)
    return app


@pytest.fixture(params=["aiohttp", "wrk"])
def load(request: pytest.FixtureRequest) -> LoadGenerator:
    """Each load generator; wrk only where it is installed (built here, not at collection,
    because building it runs `wrk -v`)."""
    if request.param == "aiohttp":
        return AiohttpLoad()
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("no wrk")
    return WrkLoad(wrk)


async def test_every_request_names_a_benchmark_customer(
    load: LoadGenerator, aiohttp_server: ServerFactory
) -> None:
    seen: list[str] = []
    server = await aiohttp_server(_recording_app(seen))
    result = await load.run(str(server.make_url("/v1/items")), 4, 1)
    assert result.requests > 0 and result.errors == 0
    assert len(seen) >= result.requests
    assert len(set(seen)) > 1
    assert all(name.startswith("cus_") and len(name) == 9 for name in seen)
    assert 0 < result.p50_us <= result.p99_us


async def test_error_answers_are_counted(
    load: LoadGenerator, aiohttp_server: ServerFactory
) -> None:
    server = await aiohttp_server(_recording_app([], status=503))
    result = await load.run(str(server.make_url("/v1/items")), 2, 1)
    assert result.requests > 0
    assert result.errors == result.requests
