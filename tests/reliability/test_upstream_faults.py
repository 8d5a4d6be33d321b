"""A misbehaving upstream: every fault gives the client a clear outcome, an aborted event
where a rule matched, and leaks no connection, file descriptor or task."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import Running, StartProxy

CUSTOMER = {"X-Customer-Id": "acme"}
Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0) instead of a clean FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    await asyncio.sleep(3600)


async def malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 OK maybe\r\n\r\n")
    await writer.drain()
    writer.close()


async def closes_before_answering(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await read_head(reader)
    writer.close()


async def resets_before_answering(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await read_head(reader)
    reset(writer)


async def stalls_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    await asyncio.sleep(3600)


async def resets_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    await asyncio.sleep(0.05)
    reset(writer)


async def short_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    await writer.drain()
    writer.close()


async def unterminated_chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: text/event-stream\r\n\r\na\r\n0123456789\r\n"
    )
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()


@contextlib.asynccontextmanager
async def fake_upstream(
    behaviour: Behaviour,
) -> AsyncIterator[tuple[int, set[asyncio.Task[None]]]]:
    handlers: set[asyncio.Task[None]] = set()  # the fake's own tasks, not counted as leaks

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        with contextlib.suppress(Exception):
            await behaviour(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], handlers
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settle(
    running: Running,
    baseline: tuple[int, int] | None = None,
    ignore: set[asyncio.Task[None]] | frozenset[asyncio.Task[None]] = frozenset(),
) -> tuple[int, int]:
    """Tasks (but the fake upstream's own) and fds once in-flight work is done: with a
    baseline, wait (up to 5 s) for the counts to return to it, since closed connections
    finish asynchronously."""
    await running.flush()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        live_fakes = {t for t in ignore if not t.done()}  # each holds one socket of its own
        counts = len(asyncio.all_tasks() - live_fakes), open_fds() - len(live_fakes)
        if baseline is None or counts <= baseline or loop.time() > deadline:
            return counts
        await asyncio.sleep(0.02)


TIMEOUTS = "timeouts: {connect: 300ms, read: 300ms}"
CASES = [
    # behaviour, client outcome (status or "cut"), event expected (aborted flag)
    (never_answers, 504, None),
    (malformed, 502, None),
    (closes_before_answering, 502, None),
    (resets_before_answering, 502, None),
    (stalls_mid_body, "cut", True),
    (resets_mid_body, "cut", True),
    (short_body, "cut", True),
    (unterminated_chunks, "cut", True),
]


@pytest.mark.parametrize(
    ("behaviour", "outcome", "aborted"), CASES, ids=[c[0].__name__ for c in CASES]
)
async def test_upstream_faults(
    start_proxy: StartProxy, behaviour: Behaviour, outcome: Any, aborted: bool | None
) -> None:
    async with fake_upstream(behaviour) as (port, upstream_tasks):
        running = await start_proxy(f"http://127.0.0.1:{port}", proxy_extra=TIMEOUTS)
        before = await settle(running)
        async with aiohttp.ClientSession() as client:  # closed before the second count
            for _ in range(3):  # repeated, so a leak per exchange would show
                try:
                    async with client.get(running.proxy_url + "/v1/x", headers=CUSTOMER) as r:
                        await r.read()
                        got: Any = r.status
                except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
                    got = "cut"
                assert got == outcome
        after = await settle(running, baseline=before, ignore=upstream_tasks)
        upstream_in_use = len(running.mp._session.connector._acquired)  # type: ignore[union-attr]
        events = await running.events()
    if aborted is None:
        assert events == []  # meterproxy's own answers emit no usage
    else:
        egress = [e for e in events if e["event_name"] == "bandwidth"]
        assert len(egress) == 3
        assert {e["metadata"]["aborted"] for e in egress} == {True}
        assert {e["metadata"]["bytes"] for e in egress} == {10}
        broken = running.metric("meterproxy_proxy_errors_total", reason="upstream_broken")
        assert broken == 3  # every cut-short stream is counted
    assert after[0] <= before[0], f"tasks leaked: {[t.get_coro() for t in asyncio.all_tasks()]}"
    assert after[1] <= before[1], "file descriptors leaked"
    assert upstream_in_use == 0, "upstream connections leaked"


async def test_a_slow_connect_is_504(start_proxy: StartProxy) -> None:
    """A listener whose accept queue is full drops SYNs: the connect times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue; later SYNs are dropped
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    await asyncio.sleep(0.1)
    running = await start_proxy(f"http://127.0.0.1:{port}", proxy_extra=TIMEOUTS)
    try:
        async with running.session.get(running.proxy_url + "/v1/x", headers=CUSTOMER) as r:
            assert r.status == 504
            assert (await r.json())["error"]["code"] == "gateway_timeout"
    finally:
        for s in fillers:
            s.close()
        listener.close()
