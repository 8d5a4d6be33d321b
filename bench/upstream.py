"""The upstream every benchmark target forwards to (a script; one process, uvloop).

Endpoints (any method, any other path answers the small JSON body):
- `POST /v1/chat/completions?events=N&interval_us=U`: an OpenAI-style server-sent-event
  stream of N chunks, one every U microseconds, each stamped with `t` = CLOCK_MONOTONIC
  in ns just before it is written, usage in the last; then `data: [DONE]`.
- `GET /v1/download?bytes=N`: N bytes, streamed in 256 KiB chunks.
- `POST /v1/upload`: reads the body to its end, answers `{"bytes": N}`.

Run: python bench/upstream.py --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

# A typical small API answer (about 500 bytes): per-request cost dominates, not bytes.
SMALL_BODY = json.dumps(
    {"object": "list", "data": [{"id": f"item_{i:03d}", "name": "an item"} for i in range(12)]}
).encode()
CHUNK = b"x" * (256 * 1024)
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def sse_event(stamp_ns: int, last: bool) -> bytes:
    """One chunk event; the last carries usage, as the reference chat-tokens rule reads."""
    usage = '{"prompt_tokens":9,"completion_tokens":1000}' if last else "null"
    return (
        b'data: {"object":"chat.completion.chunk","model":"bench","t":%d,'
        b'"choices":[{"index":0,"delta":{"content":"token "}}],"usage":%s}\n\n'
        % (stamp_ns, usage.encode())
    )


async def chat_stream(request: web.BaseRequest) -> web.StreamResponse:
    await request.read()
    events = int(request.query.get("events", "1000"))
    interval = int(request.query.get("interval_us", "1000")) / 1e6
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    for i in range(events):
        if i and interval:
            await asyncio.sleep(interval)
        await response.write(sse_event(time.monotonic_ns(), last=i == events - 1))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def download(request: web.BaseRequest) -> web.StreamResponse:
    remaining = int(request.query.get("bytes", "0"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = remaining
    await response.prepare(request)
    while remaining > 0:
        chunk = CHUNK if remaining >= len(CHUNK) else CHUNK[:remaining]
        await response.write(chunk)
        remaining -= len(chunk)
    await response.write_eof()
    return response


async def upload(request: web.BaseRequest) -> web.Response:
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
    return web.json_response({"bytes": received})


async def handle(request: web.BaseRequest) -> web.StreamResponse:
    path = request.path
    if path == "/v1/chat/completions":
        return await chat_stream(request)
    if path == "/v1/download":
        return await download(request)
    if path == "/v1/upload":
        return await upload(request)
    return web.Response(body=SMALL_BODY, content_type="application/json")


async def serve(port: int) -> None:
    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()  # until the benchmark terminates the process


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(description="benchmark upstream")
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
