"""WebSocket upgrades: frames relayed both ways, metered as one exchange at close.

Each hop keeps its own pings (autoping); data frames and the close code cross the
proxy. `request.bytes`/`response.bytes` count message payloads in each direction.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from yarl import URL

from proxy.errors import UpstreamUnreachable
from rules.exchange import Exchange

# Handshake headers that the client side of aiohttp writes itself for the upstream hop.
_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    connection = request.headers.get("connection", "").lower()
    return request.headers.get("upgrade", "").lower() == "websocket" and "upgrade" in connection


async def relay_websocket(
    request: web.BaseRequest,
    x: Exchange,
    session: aiohttp.ClientSession,
    url: URL,
    headers: Any,
    close_timeout_s: float,
) -> web.StreamResponse:
    """Open the upstream socket first, then accept the client's; relay until one closes.

    Raises UpstreamUnreachable when the upstream cannot be reached. An upstream that
    refuses the upgrade has its status relayed to the client.
    """
    protocols = _protocols(request)
    for name in _HANDSHAKE:
        headers.popall(name, None)
    try:
        upstream = await session.ws_connect(
            url,
            headers=headers,
            protocols=protocols,
            autoclose=False,
            max_msg_size=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=close_timeout_s),
        )
    except aiohttp.WSServerHandshakeError as exc:
        x.status = exc.status
        return web.Response(status=exc.status, text=exc.message)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamUnreachable(f"the upstream WebSocket could not be opened: {exc}") from exc
    client = web.WebSocketResponse(
        protocols=(upstream.protocol,) if upstream.protocol else (),
        autoclose=False,
        max_msg_size=0,
    )
    async with upstream:
        await client.prepare(request)
        x.status = 101
        await _pump_both(x, client, upstream)
    return client


def _protocols(request: web.BaseRequest) -> tuple[str, ...]:
    values = request.headers.getall("sec-websocket-protocol", ())
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


class _Flow:
    """One direction of a socket: payload bytes relayed."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = 0


class _Ending:
    """How the socket ended: the first close frame wins; the other direction follows it."""

    __slots__ = ("clean", "closing")

    def __init__(self) -> None:
        self.closing = False  # a close frame is being relayed
        self.clean = True


async def _pump_both(
    x: Exchange, client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    up, down, ending = _Flow(), _Flow(), _Ending()
    # Both directions are owned by this task group and awaited; when one side ends
    # (its close already relayed to the other) the other direction is cancelled.
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(_pump(client, upstream, up, ending)),
                group.create_task(_pump(upstream, client, down, ending)),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
    finally:
        x.request_bytes, x.response_bytes = up.sent, down.sent
        x.aborted = not ending.clean


async def _pump(source: Any, sink: Any, flow: _Flow, ending: _Ending) -> None:
    """Relay messages until the source closes; close the sink with the same code."""
    while True:
        msg = await source.receive()
        if msg.type == WSMsgType.TEXT:
            flow.sent += len(msg.data.encode())
            await sink.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            flow.sent += len(msg.data)
            await sink.send_bytes(msg.data)
        elif msg.type == WSMsgType.CLOSE:
            ending.closing = True
            code = msg.data if isinstance(msg.data, int) else WSCloseCode.OK
            await _close(source, sink, code, msg.extra or "")
            return
        elif msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
            if ending.closing:  # the other direction is relaying a close frame
                return
            ending.clean = False  # a peer vanished without a close frame
            await _close(source, sink, WSCloseCode.GOING_AWAY, "")
            return


async def _close(source: Any, sink: Any, code: int, reason: str) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await sink.close(code=code, message=reason.encode())
    with contextlib.suppress(ConnectionError, RuntimeError):
        await source.close(code=code)
