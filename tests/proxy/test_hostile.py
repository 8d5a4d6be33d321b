"""Hostile and malformed clients: smuggling shapes, floods, slow clients, oversized input."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import Running, StartProxy
from tests.proxy.upstream import Upstream


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, TestServer]:
    up = Upstream()
    return up, await aiohttp_server(up.app())


async def exchange_raw(running: Running, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", running.mp.port("proxy"))
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    return data


HEAD = b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nX-Customer-Id: acme\r\n"
SMUGGLING = {
    "content-length and transfer-encoding": HEAD
    + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two content-lengths": HEAD + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "repeated equal content-length": HEAD + b"Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
    "obsolete line folding": HEAD + b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "transfer-encoding list": HEAD + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "unknown transfer-encoding": HEAD + b"Transfer-Encoding: xchunked\r\n\r\n",
    "signed content-length": HEAD + b"Content-Length: +4\r\n\r\nabcd",
    "space before colon": HEAD + b"Content-Length : 4\r\n\r\nabcd",
    "bad chunk size": HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "bare LF line endings": b"GET /v1/echo HTTP/1.1\nHost: x\nX-Customer-Id: acme\n\n",
    "header over 8 KiB": HEAD + b"X-Big: " + b"a" * 9000 + b"\r\nContent-Length: 0\r\n\r\n",
    "too many headers": HEAD + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n",
}


@pytest.mark.parametrize("raw", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_ambiguous_requests_are_refused_never_forwarded(
    upstream: tuple[Upstream, TestServer],
    start_proxy: StartProxy,
    raw: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    up, server = upstream
    running = await start_proxy(f"http://127.0.0.1:{server.port}")
    with caplog.at_level(logging.DEBUG):
        answer = await exchange_raw(running, raw)
    assert answer.split(b"\r\n")[0].split(b" ")[1] == b"400"
    assert up.seen == []
    assert running.metric("meterproxy_proxy_errors_total", reason="bad_request") == 1
    # a malformed request is a counted debug line, not an error with a traceback
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_connections_beyond_the_cap_are_closed(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(f"http://127.0.0.1:{server.port}", proxy_extra="max_connections: 2")
    port = running.mp.port("proxy")
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v1/echo HTTP/1.1\r\nHost: x\r\nX-Customer-Id: acme\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), timeout=5) == b""  # closed unanswered
    assert running.metric("meterproxy_proxy_errors_total", reason="too_many_connections") == 1
    for _, w in held:
        w.close()
    writer.close()


async def test_a_slowloris_connection_is_closed(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(
        f"http://127.0.0.1:{server.port}", proxy_extra="timeouts: {client: 300ms}"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", running.mp.port("proxy"))
    closed = asyncio.ensure_future(reader.read())
    for byte in b"GET /v1/echo HTTP/1.1\r\nHost: x\r\n":  # never finishes its headers
        if closed.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(closed, timeout=10) == b""
    writer.close()


async def test_a_stalled_request_body_is_408(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(
        f"http://127.0.0.1:{server.port}", proxy_extra="timeouts: {client: 300ms}"
    )
    answer = await exchange_raw(running, HEAD + b"Content-Length: 10\r\n\r\nabc")
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"code": "request_timeout"' in answer
