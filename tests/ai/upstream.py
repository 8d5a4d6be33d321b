"""An in-process AI upstream: OpenAI, Anthropic and Gemini wire formats, streamed or not.

Every response reports `tokens` as its usage. A stream writes one frame per write; a test
that needs to pace it queues a `Pacing` with `pace()`: the next stream waits on
`pacing.hold(i)` before writing frame i and sets `pacing.written(i)` after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.ai import wire
from tests.ai.wire import AnthropicDelta, Tokens

EVENT_STREAM = "text/event-stream; charset=utf-8"


@dataclass
class Pacing:
    """Gates for one stream: frame i waits for `hold(i)` and sets `written(i)` once sent."""

    holds: dict[int, asyncio.Event] = field(default_factory=dict)
    sent: dict[int, asyncio.Event] = field(default_factory=dict)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the handler returned

    def hold(self, index: int) -> asyncio.Event:
        return self.holds.setdefault(index, asyncio.Event())

    def written(self, index: int) -> asyncio.Event:
        return self.sent.setdefault(index, asyncio.Event())


@dataclass
class AiUpstream:
    """Answers every call with `tokens` as its usage and `pieces` as its text."""

    tokens: Tokens = field(default_factory=lambda: Tokens(input=120, output=48, cached=64))
    pieces: list[str] = field(default_factory=lambda: ["Hel", "lo", "!"])
    anthropic_delta: AnthropicDelta = "output"  # what Anthropic's message_delta reports
    server_tool_input: int = 0  # Anthropic: input a server tool adds mid-stream
    customers: list[str] = field(default_factory=list)  # X-Meterproxy-Customer per request
    _pacing: list[Pacing] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1beta/models/{target}", self.gemini)
        app.router.add_post("/v1/images/generations", self.images)
        return app

    def pace(self) -> Pacing:
        """Gates for the next stream this upstream serves (queued in request order)."""
        pacing = Pacing()
        self._pacing.append(pacing)
        return pacing

    async def _request(self, request: web.Request) -> dict[str, Any]:
        self.customers.append(request.headers.get("X-Meterproxy-Customer", ""))
        body: dict[str, Any] = await request.json()
        return body

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._request(request)
        model = body["model"]
        if not body.get("stream"):
            text = "".join(self.pieces)
            return web.json_response(wire.openai_chat_body(model, self.tokens, text))
        include_usage = (body.get("stream_options") or {}).get("include_usage", False)
        tokens = self.tokens if include_usage else None
        return await self._stream(request, wire.openai_chat_frames(model, tokens, self.pieces))

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._request(request)
        model = body["model"]
        if not body.get("stream"):
            text = "".join(self.pieces)
            return web.json_response(wire.openai_response_body(model, self.tokens, text))
        return await self._stream(
            request, wire.openai_response_frames(model, self.tokens, self.pieces)
        )

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._request(request)
        model = body["model"]
        if not body.get("stream"):
            text = "".join(self.pieces)
            message = wire.anthropic_message(model, self.tokens, text, self.tokens.output)
            return web.json_response(message)
        frames = wire.anthropic_frames(
            model, self.tokens, self.pieces, self.anthropic_delta, self.server_tool_input
        )
        return await self._stream(request, frames)

    async def gemini(self, request: web.Request) -> web.StreamResponse:
        await self._request(request)
        model, _, method = request.match_info["target"].partition(":")
        if method == "generateContent":
            text = "".join(self.pieces)
            return web.json_response(wire.gemini_body(model, self.tokens, text, self.tokens.output))
        if method == "countTokens":
            return web.json_response({"totalTokens": self.tokens.input})
        if method == "streamGenerateContent" and request.query.get("alt") == "sse":
            frames = wire.gemini_frames(model, self.tokens, self.pieces)
            return await self._stream(request, frames, "text/event-stream")
        raise web.HTTPNotFound()

    async def images(self, request: web.Request) -> web.Response:
        body = await self._request(request)
        return web.json_response(wire.image_body(int(body.get("n", 1))))

    async def _stream(
        self, request: web.Request, frames: Sequence[bytes], content_type: str = EVENT_STREAM
    ) -> web.StreamResponse:
        pacing = self._pacing.pop(0) if self._pacing else Pacing()
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        try:
            for i, frame in enumerate(frames):
                if i in pacing.holds:
                    await pacing.holds[i].wait()
                await response.write(frame)
                pacing.written(i).set()
            await response.write_eof()
        except ConnectionError:
            pass  # the proxy stopped reading (no drain): the rest is lost, as with any upstream
        finally:
            pacing.ended.set()
        return response
