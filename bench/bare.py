"""The floor for our stack: a minimal streaming aiohttp pass-through proxy (uvloop).

Forwards method, path, query, headers (hop-by-hop removed) and both bodies chunk by
chunk, as meterproxy does, with nothing else: no identification, rules, events or metrics.

Run: python bench/bare.py --port PORT --upstream http://127.0.0.1:UPSTREAM_PORT
"""

import argparse
import asyncio

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDictProxy

HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer", "host"}


def forwardable(headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k.lower() not in HOP]


async def serve(port: int, upstream: str) -> None:
    connector = aiohttp.TCPConnector(limit=10_000)  # meterproxy's default pool size
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        async with session.request(
            request.method,
            upstream + request.raw_path,
            headers=forwardable(request.headers),
            data=request.content if request.body_exists else None,
            allow_redirects=False,
        ) as up:
            response = web.StreamResponse(status=up.status, headers=forwardable(up.headers))
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()  # until the benchmark terminates the process


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bare aiohttp pass-through proxy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream.rstrip("/")))
