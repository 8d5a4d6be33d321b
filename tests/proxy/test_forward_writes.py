"""How the response reaches the client: few socket writes, and never a head held back.

A body that has fully arrived goes out with its head in one socket write; when the
upstream makes the proxy wait, the head goes out first, whatever the durability mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import TestServer
from aiohttp.web_protocol import RequestHandler

from proxy import forward
from tests.conftest import StartProxy

CUSTOMER = {"X-Customer-Id": "acme"}
BODY = b'{"items": [1, 2, 3]}'


class Gate:
    """An upstream whose /slow answer sends its head (and maybe a first chunk), then
    waits until the test opens the gate."""

    def __init__(self, first_chunk: bytes = b"") -> None:
        self.first_chunk = first_chunk
        self.open = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/small", self.small)
        app.router.add_get("/v1/chunked", self.chunked)
        app.router.add_get("/v1/slow", self.slow)
        app.router.add_get("/v1/soon", self.soon)
        return app

    async def small(self, request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write_eof(BODY)
        return response

    async def soon(self, request: web.Request) -> web.StreamResponse:
        """The head, then the first chunk a moment later (a socket write each)."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(0.05)
        await response.write(self.first_chunk)
        await self.open.wait()
        await response.write_eof(b"data: last\n\n")
        return response

    async def slow(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if self.first_chunk:
            await response.write(self.first_chunk)
        await self.open.wait()
        await response.write(b"data: last\n\n")
        await response.write_eof()
        return response


@pytest.fixture
def server_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """(local port, size) of the socket writes of every server-side response: the
    upstream's and the proxy's, told apart by port."""
    seen: list[tuple[int, int]] = []
    write, writelines = StreamWriter._write, StreamWriter._writelines

    def note(writer: StreamWriter, size: int) -> None:
        if isinstance(writer.protocol, RequestHandler) and writer.transport is not None:
            seen.append((writer.transport.get_extra_info("sockname")[1], size))

    def counted_write(self: StreamWriter, chunk: Any) -> None:
        note(self, len(chunk))
        write(self, chunk)

    def counted_writelines(self: StreamWriter, chunks: Any) -> None:
        chunks = tuple(chunks)
        note(self, sum(len(c) for c in chunks))
        writelines(self, chunks)

    monkeypatch.setattr(StreamWriter, "_write", counted_write)
    monkeypatch.setattr(StreamWriter, "_writelines", counted_writelines)
    yield seen


@pytest.mark.parametrize("path", ["/v1/small", "/v1/chunked"])
async def test_a_small_response_is_one_socket_write(
    aiohttp_server: Any, start_proxy: StartProxy, server_writes: list[tuple[int, int]], path: str
) -> None:
    server: TestServer = await aiohttp_server(Gate().app())
    running = await start_proxy(f"http://127.0.0.1:{server.port}")
    async with running.session.get(running.proxy_url + path, headers=CUSTOMER) as response:
        assert await response.read() == BODY
        head = sum(len(k) + len(v) for k, v in response.raw_headers)
    proxy_writes = [size for port, size in server_writes if port == running.mp.port("proxy")]
    assert len(proxy_writes) == 1, server_writes
    assert proxy_writes[0] > head + len(BODY)  # head, body (and chunk framing) together
    [event] = [e for e in await running.events() if e["event_name"] == "bandwidth"]
    assert event["metadata"]["bytes"] == len(BODY)


@pytest.mark.parametrize("durability", ["batched", "strict"])
@pytest.mark.parametrize("first_chunk", [b"", b"data: first\n\n"])
async def test_the_head_is_not_held_while_the_upstream_makes_us_wait(
    aiohttp_server: Any, start_proxy: StartProxy, durability: str, first_chunk: bytes
) -> None:
    gate = Gate(first_chunk)
    server: TestServer = await aiohttp_server(gate.app())
    running = await start_proxy(
        f"http://127.0.0.1:{server.port}", proxy_extra=f"durability: {durability}"
    )
    # The gate opens only once the client holds the head: a held head would hang here
    # (the timeout turns that into a failure instead of a stuck test).
    request = running.session.get(running.proxy_url + "/v1/slow", headers=CUSTOMER)
    async with await asyncio.wait_for(request, timeout=10) as response:
        assert response.status == 200
        gate.open.set()
        assert await response.read() == first_chunk + b"data: last\n\n"
    events = await running.events()
    [event] = [e for e in events if e["event_name"] == "bandwidth"]
    assert event["metadata"]["bytes"] == len(first_chunk) + len(b"data: last\n\n")
    assert event["metadata"]["aborted"] is False


async def test_a_first_chunk_soon_after_the_head_leaves_with_it(
    aiohttp_server: Any, start_proxy: StartProxy, server_writes: list[tuple[int, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Within HEAD_GRACE_S (raised here, so that timing cannot decide the outcome) the head
    waits for the first chunk: one write, one wake-up of the client for both."""
    monkeypatch.setattr(forward, "HEAD_GRACE_S", 5.0)
    first = b"data: first\n\n"
    gate = Gate(first)
    server: TestServer = await aiohttp_server(gate.app())
    running = await start_proxy(f"http://127.0.0.1:{server.port}")
    request = running.session.get(running.proxy_url + "/v1/soon", headers=CUSTOMER)
    async with await asyncio.wait_for(request, timeout=10) as response:
        # The head's bytes as sent: status line, "name: value" lines, blank line.
        head = len(b"HTTP/1.1 200 OK\r\n\r\n") + sum(
            len(k) + len(v) + 4 for k, v in response.raw_headers)
        gate.open.set()
        assert await response.read() == first + b"data: last\n\n"
    proxy_writes = [size for port, size in server_writes if port == running.mp.port("proxy")]
    upstream_writes = [size for port, size in server_writes if port == server.port]
    # The upstream wrote its head and the first chunk apart; the proxy, together.
    assert len(upstream_writes) == 3 and upstream_writes[1] < len(first) + 10, server_writes
    assert proxy_writes[0] >= head + len(first), (head, server_writes)
