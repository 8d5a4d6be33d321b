"""An in-process upstream for proxy tests: it records what it received and answers as told."""

from __future__ import annotations

import asyncio
import gzip
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Seen:
    method: str
    raw_path: str
    headers: dict[str, list[str]]
    body: bytes


@dataclass
class Upstream:
    """Handlers for the paths tests use; `seen` records every request received."""

    seen: list[Seen] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=2**31)
        app.router.add_route("*", "/echo{tail:.*}", self.echo)
        app.router.add_route("*", "/v1/echo{tail:.*}", self.echo)
        app.router.add_get("/v1/redirect", self.redirect)
        app.router.add_get("/v1/gzip", self.gzipped)
        app.router.add_get("/v1/headers", self.headers)
        app.router.add_route("*", "/v1/status/{status}", self.status)
        app.router.add_get("/v1/slow", self.slow)
        app.router.add_get("/v1/sse-gated", self.sse_gated)
        app.router.add_get("/v1/bytes/{n}", self.many_bytes)
        app.router.add_post("/v1/sink", self.sink)
        app.router.add_get("/v1/json", self.json_body)
        app.router.add_get("/v1/cut", self.cut)
        return app

    async def _record(self, request: web.Request, read_body: bool = True) -> Seen:
        headers: dict[str, list[str]] = {}
        for k, v in request.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        body = await request.read() if read_body else b""
        seen = Seen(request.method, request.raw_path, headers, body)
        self.seen.append(seen)
        return seen

    async def echo(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        return web.json_response(
            {
                "method": seen.method,
                "raw_path": seen.raw_path,
                "headers": seen.headers,
                "body": seen.body.decode("latin-1"),
            }
        )

    async def redirect(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=302, headers={"Location": "/v1/elsewhere"})

    async def gzipped(self, request: web.Request) -> web.Response:
        await self._record(request)
        body = gzip.compress(json.dumps({"usage": {"tokens": 7}}).encode(), mtime=0)
        return web.Response(
            body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    async def headers(self, request: web.Request) -> web.Response:
        await self._record(request)
        response = web.Response(
            text="ok",
            headers={
                "X-Usage-Tokens": "12",
                "X-Usage-Model": "m",
                "X-Kept": "yes",
                "Connection": "X-Hop",
                "X-Hop": "gone",
                "Keep-Alive": "timeout=5",
            },
        )
        return response

    async def status(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        status = int(request.match_info["status"])
        if status in (204, 304):
            return web.Response(status=status, headers={"ETag": '"v1"'})
        return web.Response(status=status, text=f"status {status}")

    async def slow(self, request: web.Request) -> web.Response:
        await self._record(request)
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(text="late")

    async def sse_gated(self, request: web.Request) -> web.StreamResponse:
        """First event at once; the second only after the test sets `gate`."""
        await self._record(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"n": 1}\n\n')
        await self.gate.wait()
        await response.write(b'data: {"n": 2, "usage": {"tokens": 5}}\n\n')
        await response.write_eof()
        return response

    async def many_bytes(self, request: web.Request) -> web.StreamResponse:
        """n bytes streamed in 64 KiB chunks, never held in memory at once."""
        await self._record(request)
        n = int(request.match_info["n"])
        response = web.StreamResponse()
        response.content_length = n
        await response.prepare(request)
        chunk = b"x" * 65536
        sent = 0 if request.method != "HEAD" else n
        while sent < n:
            piece = chunk[: min(len(chunk), n - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def sink(self, request: web.Request) -> web.Response:
        """Reads a body of any size chunk by chunk and reports its length."""
        await self._record(request, read_body=False)
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total})

    async def json_body(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"usage": {"prompt_tokens": 3, "completion_tokens": 4}})

    async def cut(self, request: web.Request) -> web.StreamResponse:
        """Promises 1000 bytes, sends 10, then drops the connection."""
        await self._record(request)
        response = web.StreamResponse()
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"0123456789")
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return response


def as_json(text: str) -> Any:
    return json.loads(text)
