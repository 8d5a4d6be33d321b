"""Large bodies stream with flat memory; 100-continue; WebSockets."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, web
from aiohttp.test_utils import TestServer

from tests.conftest import StartProxy
from tests.proxy.upstream import Upstream

CUSTOMER = {"X-Customer-Id": "acme"}
HUNDRED_MB = 100 * 1024 * 1024
MEMORY_BOUND = 50 * 1024 * 1024


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, TestServer]:
    up = Upstream()
    return up, await aiohttp_server(up.app())


def url_of(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, field
    return int(match.group(1)) * 1024


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) and return the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS")


def peak_rss() -> int:
    return _status_kb("VmHWM")


async def test_100mb_download_streams_with_flat_memory(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server))
    base = reset_peak_rss()
    received = 0
    async with running.session.get(
        f"{running.proxy_url}/v1/bytes/{HUNDRED_MB}", headers=CUSTOMER
    ) as r:
        assert r.headers["Content-Length"] == str(HUNDRED_MB)
        async for chunk in r.content.iter_any():
            received += len(chunk)
    growth = peak_rss() - base
    assert received == HUNDRED_MB
    assert growth < MEMORY_BOUND, f"memory grew {growth / 2**20:.0f} MiB"
    [bandwidth] = [e for e in await running.events() if e["event_name"] == "bandwidth"]
    assert bandwidth["metadata"]["bytes"] == HUNDRED_MB


async def test_100mb_upload_streams_with_flat_memory(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server), proxy_extra="max_request_body: 200MB")
    chunk = b"u" * 65536

    async def body() -> Any:
        for _ in range(HUNDRED_MB // len(chunk)):
            yield chunk

    base = reset_peak_rss()
    async with running.session.post(
        f"{running.proxy_url}/v1/sink", data=body(), headers=CUSTOMER
    ) as r:
        assert r.status == 200
        assert (await r.json())["received"] == HUNDRED_MB
    growth = peak_rss() - base
    assert growth < MEMORY_BOUND, f"memory grew {growth / 2**20:.0f} MiB"
    [bandwidth] = [e for e in await running.events() if e["event_name"] == "bandwidth"]
    assert bandwidth["metadata"]["request_bytes"] == HUNDRED_MB


async def _raw_exchange(port: int, head: bytes, body: bytes | None) -> tuple[bytes, bytes]:
    """Send a request head, read what comes back before the body, then send the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    rest = b""
    if body is not None and first.startswith(b"HTTP/1.1 100"):
        writer.write(body)
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(65536), timeout=5)
    writer.close()
    return first, rest


async def test_expect_100_continue_is_relayed_from_the_upstream(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    up, server = upstream
    running = await start_proxy(url_of(server))
    head = (
        b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nX-Customer-Id: acme\r\n"
        b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    first, rest = await _raw_exchange(running.mp.port("proxy"), head, b"hello")
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert rest.startswith(b"HTTP/1.1 200")
    assert up.seen[0].body == b"hello"


@pytest.mark.parametrize(
    ("extra_header", "status"),
    [(b"", b"401"), (b"X-Customer-Id: acme\r\n", b"413")],
)
async def test_own_errors_are_answered_without_100_continue(
    upstream: tuple[Upstream, TestServer],
    start_proxy: StartProxy,
    extra_header: bytes,
    status: bytes,
) -> None:
    up, server = upstream
    running = await start_proxy(url_of(server), proxy_extra="max_request_body: 4")
    head = (
        b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n"
        + extra_header
        + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    first, _ = await _raw_exchange(running.mp.port("proxy"), head, b"hello")
    assert first.startswith(b"HTTP/1.1 " + status)
    assert up.seen == []


async def ws_upstream(aiohttp_server: Any) -> TestServer:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat.v1",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "bye":
                    await ws.close(code=4001, message=b"see you")
                    break
                await ws.send_str(msg.data.upper())
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    app = web.Application()
    app.router.add_get("/v1/ws", handler)
    server: TestServer = await aiohttp_server(app)
    return server


async def test_websocket_frames_and_close_codes(
    aiohttp_server: Any, start_proxy: StartProxy
) -> None:
    server = await ws_upstream(aiohttp_server)
    running = await start_proxy(url_of(server))
    async with running.session.ws_connect(
        f"{running.proxy_url}/v1/ws", headers=CUSTOMER, protocols=("chat.v1",)
    ) as ws:
        assert ws.protocol == "chat.v1"
        await ws.send_str("hello")
        assert (await ws.receive()).data == "HELLO"
        await ws.send_bytes(b"\x01\x02\x03")
        assert (await ws.receive()).data == b"\x03\x02\x01"
        await ws.send_str("bye")
        closing = await ws.receive()
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert closing.data == 4001
    events = await running.events()
    [bandwidth] = [e for e in events if e["event_name"] == "bandwidth"]
    assert bandwidth["metadata"] == {"bytes": 5 + 3, "request_bytes": 5 + 3 + 3, "aborted": False}
    [call] = [e for e in events if e["event_name"] == "api.call"]
    assert call["metadata"]["status"] == 101


async def test_websocket_client_close_code_reaches_the_upstream(
    aiohttp_server: Any, start_proxy: StartProxy
) -> None:
    codes: list[int | None] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        codes.append(ws.close_code)
        return ws

    app = web.Application()
    app.router.add_get("/v1/ws", handler)
    server = await aiohttp_server(app)
    running = await start_proxy(url_of(server))
    async with running.session.ws_connect(f"{running.proxy_url}/v1/ws", headers=CUSTOMER) as ws:
        await ws.close(code=WSCloseCode.POLICY_VIOLATION)
    await running.flush()
    for _ in range(50):
        if codes:
            break
        await asyncio.sleep(0.02)
    assert codes == [WSCloseCode.POLICY_VIOLATION]
