"""HTTP load generation: wrk when installed, else an aiohttp client loop (slower: it
competes for the load generator's core, so its absolute numbers are lower).

Both send `X-Customer-Id` from a rotating set of 10,000 ids and report the same
`LoadResult`: requests completed, wall time, errors (non-2xx/3xx and socket errors) and
latency percentiles.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from bench.stats import percentile

CUSTOMERS = 10_000
WRK_SCRIPT = Path(__file__).with_name("wrk_customers.lua")


def customer_id(n: int) -> str:
    """The n-th benchmark customer id, as the wrk script spells it."""
    return f"cus_{n % CUSTOMERS:05d}"


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    errors: int
    p50_us: float
    p99_us: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


class LoadGenerator(Protocol):
    name: str

    async def run(self, url: str, connections: int, seconds: float) -> LoadResult:
        """Keep `connections` keep-alive connections busy with GETs of `url` for `seconds`."""
        ...


def parse_wrk(output: str) -> LoadResult:
    """Read the `BENCH {json}` line that wrk_customers.lua prints; ValueError if absent."""
    for line in output.splitlines():
        if line.startswith("BENCH "):
            data = json.loads(line[len("BENCH ") :])
            return LoadResult(
                requests=int(data["requests"]),
                seconds=int(data["duration_us"]) / 1e6,
                errors=int(data["errors"]),
                p50_us=float(data["p50_us"]),
                p99_us=float(data["p99_us"]),
            )
    raise ValueError(f"wrk printed no BENCH line:\n{output}")


def wrk_version(binary: str) -> str:
    """E.g. "wrk debian/4.1.0-3+b2" (wrk -v prints it first, then its usage)."""
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).strip().splitlines()
    return " ".join(first[0].split()[:2]) if first else "wrk"


class WrkLoad:
    """wrk, one thread (the load generator gets one core), through wrk_customers.lua."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.name = f"{wrk_version(binary)}, 1 thread"

    async def run(self, url: str, connections: int, seconds: float) -> LoadResult:
        process = await asyncio.create_subprocess_exec(
            self.binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--timeout", "10s", "-s", str(WRK_SCRIPT), url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await process.communicate()
        return parse_wrk(output.decode(errors="replace"))


class AiohttpLoad:
    """A closed-loop aiohttp client: `connections` workers, one request in flight each."""

    name = "aiohttp client (wrk not installed)"

    async def run(self, url: str, connections: int, seconds: float) -> LoadResult:
        latencies: list[float] = []
        errors = [0]
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:
            started = time.perf_counter()
            deadline = started + seconds
            await asyncio.gather(
                *(
                    _worker(session, url, start, deadline, latencies, errors)
                    for start in range(connections)
                )
            )
            wall = time.perf_counter() - started
        return LoadResult(
            requests=len(latencies),
            seconds=wall,
            errors=errors[0],
            p50_us=percentile(latencies, 50) if latencies else 0.0,
            p99_us=percentile(latencies, 99) if latencies else 0.0,
        )


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    n: int,
    deadline: float,
    latencies: list[float],
    errors: list[int],
) -> None:
    while time.perf_counter() < deadline:
        began = time.perf_counter_ns()
        try:
            async with session.get(url, headers={"X-Customer-Id": customer_id(n)}) as response:
                await response.read()
                if response.status >= 400:
                    errors[0] += 1
        except aiohttp.ClientError:
            errors[0] += 1
            continue
        latencies.append((time.perf_counter_ns() - began) / 1000)
        n += 1


def pick_generator() -> LoadGenerator:
    """wrk from PATH when installed, else the aiohttp fallback."""
    binary = shutil.which("wrk")
    return WrkLoad(binary) if binary else AiohttpLoad()
