"""Where the one-client latency tail comes from: the slowest requests against the writer's
flushes (a script).

One client sends requests one at a time through meterproxy (the benchmark's
configuration, `server_timing` on) for `--seconds`; meterproxy runs with `EventWriter._flush`
wrapped to record when each flush starts and ends (CLOCK_MONOTONIC, shared by processes).
It prints the latency p50 and p99, what share of the slowest 2 % of requests overlap a
flush against the share of all requests that do, and the proxy's own time (Server-Timing)
of slow and of other requests. Slow requests that overlap flushes far more often than the
rest, while the proxy's own time stays small, wait outside the event loop: for a core
that the store's work holds.

Run: .venv/bin/python -m bench.flush_tail [--seconds 10] [--writer thread|process]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import bisect
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.fleet import PYTHON, START_SECONDS, upstream_command
from bench.floor import Variant, variant_config
from bench.processes import Processes, cpu_split, free_port, wait_for_port

SLOW_SHARE = 0.02  # the slowest 2 %: the tail that p99 sits in


@dataclass(frozen=True)
class Sample:
    start: float  # time.monotonic() when the request was sent
    seconds: float  # until its body was read
    own_seconds: float  # meterproxy's own work until the response headers (Server-Timing)


@dataclass(frozen=True)
class Tail:
    p50_us: float
    p99_us: float
    slow_overlapping: float  # share of the slowest requests that overlap a flush
    all_overlapping: float  # share of all requests that do
    slow_own_us: float  # median Server-Timing of the slowest requests
    other_own_us: float  # and of the others


def overlaps(sample: Sample, flushes: Sequence[tuple[float, float]], starts: list[float]) -> bool:
    """Whether a flush ran at some moment of the sample's request (`starts`: the flushes'
    start times, sorted)."""
    i = bisect.bisect_right(starts, sample.start + sample.seconds) - 1
    return i >= 0 and flushes[i][1] >= sample.start


def tail(samples: Sequence[Sample], flushes: Sequence[tuple[float, float]]) -> Tail:
    ordered = sorted(samples, key=lambda s: s.seconds)
    n = len(ordered)
    cut = max(1, round(n * SLOW_SHARE))
    slow, other = ordered[n - cut:], ordered[:n - cut]
    flushes = sorted(flushes)
    starts = [a for a, _ in flushes]

    def share(group: Sequence[Sample]) -> float:
        return sum(overlaps(s, flushes, starts) for s in group) / len(group)

    return Tail(
        p50_us=ordered[n // 2].seconds * 1e6,
        p99_us=ordered[min(n - 1, int(n * 0.99))].seconds * 1e6,
        slow_overlapping=share(slow),
        all_overlapping=share(ordered),
        slow_own_us=statistics.median(s.own_seconds for s in slow) * 1e6,
        other_own_us=statistics.median(s.own_seconds for s in other) * 1e6 if other else 0.0,
    )


def own_seconds(server_timing: str | None) -> float:
    """meterproxy's `dur` (ms) in a Server-Timing header, in seconds; 0 when absent."""
    for metric in (server_timing or "").split(","):
        name, _, params = metric.strip().partition(";")
        if name == "meterproxy" and params.startswith("dur="):
            return float(params[4:]) / 1000
    return 0.0


# ------------------------------------------------------------------ meterproxy, recording


def serve(config: str, flushes_path: str) -> int:
    """meterproxy `run`, with each flush's start and end written to `flushes_path` at exit."""
    import billing.writer
    from proxy.cli import main

    flushes: list[tuple[float, float]] = []
    flush = billing.writer.EventWriter._flush

    async def timed(self: billing.writer.EventWriter, taken: list[Any]) -> None:
        started = time.monotonic()
        try:
            await flush(self, taken)
        finally:
            flushes.append((started, time.monotonic()))

    billing.writer.EventWriter._flush = timed  # type: ignore[method-assign]
    atexit.register(lambda: Path(flushes_path).write_text(json.dumps(flushes)))
    return main(["run", "-c", config])


# ------------------------------------------------------------------ the run


async def one_client(url: str, seconds: float) -> list[Sample]:
    samples = []
    async with aiohttp.ClientSession() as session:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            headers = {"X-Customer-Id": f"cus_{random.randrange(10_000)}"}
            started = time.monotonic()
            async with session.get(url, headers=headers) as response:
                await response.read()
            samples.append(Sample(started, time.monotonic() - started,
                                  own_seconds(response.headers.get("Server-Timing"))))
    return samples


def config_text(writer: str) -> str:
    """The benchmark's configuration with appends at `writer` and Server-Timing on."""
    text = variant_config(Variant("flush tail", writer=writer))
    return text.replace(
        "  durability: batched\n", "  durability: batched\n  server_timing: true\n", 1)


async def run(seconds: float, writer: str) -> Tail:
    server_cpus, client_cpus = cpu_split()
    with tempfile.TemporaryDirectory(prefix="flush-tail-") as tmp:
        work = Path(tmp)
        config, flushes_path = work / "meterproxy.yaml", work / "flushes.json"
        config.write_text(config_text(writer))
        processes = Processes(work)
        try:
            up, port, admin = free_port(), free_port(), free_port()
            upstream = processes.start(
                "upstream", upstream_command(up), client_cpus, {})
            await wait_for_port(up, upstream, START_SECONDS)
            env = {"BENCH_UPSTREAM": f"http://127.0.0.1:{up}",
                   "BENCH_PROXY_LISTEN": f"127.0.0.1:{port}",
                   "BENCH_ADMIN_LISTEN": f"127.0.0.1:{admin}",
                   "BENCH_DB": str(work / "bench.db")}
            args = [PYTHON, "-m", "bench.flush_tail", "--serve", str(config), str(flushes_path)]
            proxy = processes.start("meterproxy", args, server_cpus, env)
            await wait_for_port(port, proxy, START_SECONDS)
            url = f"http://127.0.0.1:{port}/v1/items"
            await one_client(url, min(seconds, 3.0))  # warm up
            samples = await one_client(url, seconds)
        finally:
            processes.stop_all()
        flushes = [(float(a), float(b)) for a, b in json.loads(flushes_path.read_text())]
    return tail(samples, flushes)


def render(result: Tail, writer: str) -> str:
    return "\n".join([
        f"one client, storage.writer: {writer}",
        f"latency p50 {result.p50_us:,.0f} us, p99 {result.p99_us:,.0f} us",
        f"slowest {SLOW_SHARE:.0%} overlapping a flush: {result.slow_overlapping:.0%}"
        f" (all requests: {result.all_overlapping:.0%})",
        f"meterproxy's own time (Server-Timing), median: slowest {result.slow_own_us:,.0f} us,"
        f" others {result.other_own_us:,.0f} us",
    ])


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        return serve(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--writer", choices=("thread", "process"), default="thread")
    args = parser.parse_args()
    print(render(asyncio.run(run(args.seconds, args.writer)), args.writer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
