"""Resident memory of a proxy process: after many requests, and while streaming large
bodies both ways at once. RSS is VmRSS from /proc, sampled every 50 ms."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.fleet import Target
from bench.loadgen import LoadGenerator
from bench.processes import rss_bytes

MB = 1_000_000
CHUNK = b"\0" * (256 * 1024)
SOAK_CONNECTIONS = 64
SOAK_SLICE_S = 20.0


@dataclass(frozen=True)
class Soak:
    requests: int  # requests completed during the soak
    errors: int
    rss: tuple[tuple[int, int], ...]  # (requests so far, RSS bytes) after each slice


@dataclass(frozen=True)
class Streamed:
    seconds: float  # wall time until both directions finished
    peak_rss: int  # highest RSS seen meanwhile (bytes)


async def soak(
    load: LoadGenerator, target: Target, requests: int, budget_s: float, path: str
) -> Soak:
    """Load `target` in slices until `requests` completed or `budget_s` ran out."""
    done = errors = 0
    rss: list[tuple[int, int]] = []
    rate = 0.0  # requests/s of the last slice: the last slice lasts only as long as needed
    deadline = time.monotonic() + budget_s
    while done < requests and (left := deadline - time.monotonic()) >= 1:
        need = (requests - done) / rate + 1 if rate else SOAK_SLICE_S
        result = await load.run(target.url + path, SOAK_CONNECTIONS, min(SOAK_SLICE_S, left, need))
        done += result.requests
        errors += result.errors
        rate = result.rps
        rss.append((done, rss_bytes(target.pid)))
    return Soak(done, errors, tuple(rss))


async def peak_rss_while(pid: int, work: asyncio.Future[Any]) -> int:
    """The highest RSS of `pid` sampled until `work` is done."""
    peak = rss_bytes(pid)
    while not work.done():
        peak = max(peak, rss_bytes(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(work), 0.05)
    return peak


async def stream_both_ways(target: Target, size: int) -> Streamed:
    """Upload `size` bytes and download `size` bytes through `target` at the same time.

    Raises RuntimeError when either direction does not carry exactly `size` bytes.
    """
    headers = {"X-Customer-Id": "cus_stream"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        started = time.perf_counter()
        work = asyncio.ensure_future(
            asyncio.gather(_upload(session, target, size), _download(session, target, size))
        )
        peak = await peak_rss_while(target.pid, work)
        sent, received = await work
    if sent != size or received != size:
        raise RuntimeError(f"{target.name}: uploaded {sent}, downloaded {received} of {size}")
    return Streamed(time.perf_counter() - started, peak)


async def _upload(session: aiohttp.ClientSession, target: Target, size: int) -> int:
    async with session.post(f"{target.url}/v1/upload", data=_zeros(size)) as response:
        received: int = (await response.json())["bytes"]
        return received


async def _download(session: aiohttp.ClientSession, target: Target, size: int) -> int:
    received = 0
    async with session.get(f"{target.url}/v1/download?bytes={size}") as response:
        async for chunk in response.content.iter_any():
            received += len(chunk)
    return received


async def _zeros(size: int) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        chunk = CHUNK if size - sent >= len(CHUNK) else CHUNK[: size - sent]
        sent += len(chunk)
        yield chunk
