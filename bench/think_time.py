"""One-client latency with and without the client's think time (a script).

`make bench` measures one-client latency with wrk, which sends the next request a few
microseconds after the last response arrives. meterproxy builds and queues an exchange's
events after its response has left (rules, templates, event ids, the writer's queue), so
with such a client that work sits in front of the next request, and the p50 shows it.
A client that spends any time between requests (parsing, its own work, a network) finds
that work done. This script shows both: one client sends requests one at a time to bare,
meterproxy without rules and meterproxy with the reference rules (every event stored),
in interleaved rounds, first back to back, then waiting `--think-us` between requests
(busy, on the client's core, so that the proxy's core sees the same idle gap every time).
It prints p50 and p99, and what each adds over bare in the same round.

Run: .venv/bin/python -m bench.think_time [--rounds 3] [--requests 2000]
     [--think-us 0,300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.fleet import START_SECONDS, bare_command, start_meterproxy, upstream_command
from bench.floor import VARIANTS, variant_config
from bench.loadgen import customer_id
from bench.processes import Processes, cpu_split, free_port, wait_for_port
from bench.stats import paired_differences, spread

PATH = "/v1/items"
TARGETS = ("bare", "no rules", "reference rules")


@dataclass(frozen=True)
class Latency:
    p50_us: float
    p99_us: float


async def start(processes: Processes, workdir: Path) -> dict[str, str]:
    """Start the upstream and the three targets; target name -> URL of PATH."""
    server_cpus, client_cpus = cpu_split()
    port = free_port()
    upstream = processes.start("upstream", upstream_command(port), client_cpus)
    await wait_for_port(port, upstream, 30)
    upstream_url = f"http://127.0.0.1:{port}"
    listen = free_port()
    bare = processes.start("bare", bare_command(listen, upstream_url), server_cpus)
    await wait_for_port(listen, bare, START_SECONDS)
    urls = {"bare": f"http://127.0.0.1:{listen}{PATH}"}
    for name, text in (("no rules", variant_config(VARIANTS[0])), ("reference rules", None)):
        target, _ = await start_meterproxy(processes, workdir, name, upstream_url,
                                           config_text=text)
        urls[name] = target.url + PATH
    return urls


async def one_client(session: aiohttp.ClientSession, url: str, n: int,
                     think_s: float) -> Latency:
    """`n` requests one at a time (10,000 customers in turn), `think_s` between them."""
    seconds = []
    for number in range(n):
        began = time.perf_counter()
        async with session.get(url, headers={"X-Customer-Id": customer_id(number)}) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"{url}: status {response.status}")
        seconds.append(time.perf_counter() - began)
        until = time.perf_counter() + think_s
        while time.perf_counter() < until:  # busy: a sleep would wake up late and vary
            pass
    seconds.sort()
    return Latency(seconds[len(seconds) // 2] * 1e6, seconds[int(len(seconds) * 0.99)] * 1e6)


Found = dict[float, dict[str, list[Latency]]]  # think time (us) -> target -> per round


async def measure(urls: dict[str, str], rounds: int, n: int, thinks_us: list[float]) -> Found:
    found: Found = {think: {name: [] for name in urls} for think in thinks_us}
    async with aiohttp.ClientSession() as session:
        for url in urls.values():  # warm-up: pools, caches, the first pages of the files
            await one_client(session, url, n // 4, 0.0)
        for think in thinks_us:
            for _ in range(rounds):
                for name, url in urls.items():
                    found[think][name].append(await one_client(session, url, n, think / 1e6))
    return found


def report(found: Found, n: int) -> str:
    lines = [f"\nOne client, {n:,} requests a sample, GET {PATH}; medians (range) of rounds;"
             " added: over bare in the same round", "",
             "| think time | target | p50 (us) | p99 (us) | added p50 (us) | added p99 (us) |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for think, targets in found.items():
        bare = targets["bare"]
        for name, samples in targets.items():
            p50 = [s.p50_us for s in samples]
            p99 = [s.p99_us for s in samples]
            added = ("-", "-") if name == "bare" else (
                paired_differences(p50, [s.p50_us for s in bare]).render(0, signed=True),
                paired_differences(p99, [s.p99_us for s in bare]).render(0, signed=True))
            lines.append(f"| {think:,.0f} us | {name} | {spread(p50).render(0)}"
                         f" | {spread(p99).render(0)} | {added[0]} | {added[1]} |")
    return "\n".join(lines)


async def main(rounds: int, n: int, thinks_us: list[float]) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-think-") as tmp:
        processes = Processes(Path(tmp))
        try:
            urls = await start(processes, Path(tmp))
            os.sched_setaffinity(0, cpu_split()[1])  # the client beside the upstream
            found = await measure(urls, rounds, n, thinks_us)
        finally:
            processes.stop_all()
    return report(found, n)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="per sample")
    parser.add_argument("--think-us", default="0,300",
                        help="comma-separated think times between requests (us)")
    args = parser.parse_args()
    thinks = [float(t) for t in args.think_us.split(",")]
    print(asyncio.run(main(args.rounds, args.requests, thinks)), file=sys.stdout)
