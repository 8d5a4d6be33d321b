"""The demo API that `make run` puts behind meterproxy.

A few JSON endpoints, one that reports token usage in response headers, an
OpenAI-style chat completion (JSON or a server-sent-event stream with usage in the
last event), an image endpoint and a plain SSE ticker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from typing import Any

from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": request.headers.get("X-Meterproxy-Customer", "world")})


async def items(request: web.Request) -> web.Response:
    return web.json_response({"items": [{"id": i, "name": f"item {i}"} for i in range(1, 6)]})


async def item(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["id"], "name": "an item"})


async def generate(request: web.Request) -> web.Response:
    """Usage reported in headers, as some inference servers do."""
    body = await request.json() if request.can_read_body else {}
    prompt = str(body.get("prompt", ""))
    output = random.randint(5, 50)
    return web.json_response(
        {"text": "lorem ipsum " * (output // 2)},
        headers={
            "X-Usage-Model": str(body.get("model", "demo-small")),
            "X-Usage-Input-Tokens": str(max(1, len(prompt.split()))),
            "X-Usage-Output-Tokens": str(output),
        },
    )


def _usage(messages: list[Any]) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
    completion = random.randint(10, 40)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def chat(request: web.Request) -> web.StreamResponse:
    """OpenAI-style chat completion; `"stream": true` streams SSE with usage at the end."""
    body = await request.json()
    usage = _usage(body.get("messages", []))
    model = body.get("model", "demo-chat")
    if not body.get("stream"):
        return web.json_response(
            {
                "id": "chatcmpl-demo",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hi there!"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for word in ["Hi", " there", "!"]:
        chunk = {
            "id": "chatcmpl-demo",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": {"content": word}}],
        }
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await asyncio.sleep(0.05)
    final = {
        "id": "chatcmpl-demo",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [],
        "usage": usage,
    }
    await response.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode())
    await response.write_eof()
    return response


async def images(request: web.Request) -> web.Response:
    body = await request.json()
    n = int(body.get("n", 1))
    return web.json_response(
        {"data": [{"url": f"https://example.invalid/{i}.png"} for i in range(n)]}
    )


async def ticker(request: web.Request) -> web.StreamResponse:
    """A plain SSE stream: one event every 200 ms."""
    count = int(request.query.get("count", "10"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(count):
        await response.write(f"event: tick\ndata: {json.dumps({'n': i})}\n\n".encode())
        await asyncio.sleep(0.2)
    await response.write_eof()
    return response


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/hello", hello)
    app.router.add_get("/v1/items", items)
    app.router.add_get("/v1/items/{id}", item)
    app.router.add_post("/v1/generate", generate)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/images/generations", images)
    app.router.add_get("/v1/stream", ticker)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="meterproxy's demo upstream API")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    web.run_app(build_app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
