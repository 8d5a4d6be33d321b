"""`POST /events/ingest` throughput: events per second stored, 1,000-event batches from
several concurrent clients. Bodies are encoded before the clock starts; each 200 arrives
only once its events are durable, and the stored count comes from `ingested_count`.

`bench/run.py` calls `batch_bodies` and `ingest` against its own fleet. Run as a script, it
measures both engines in one run: `meterproxy run` with the benchmark configuration, pinned
alone to the first core (its SQLite writer thread included), on an SQLite file and in fleet
mode on a PostgreSQL database created for each run (dropped after). Every run starts a
fresh server on fresh events and reports events/s and the server's CPU time per event.
With `--before TREE` (another checkout, e.g. `git worktree add /tmp/before HEAD~3`) each
round also runs that tree's meterproxy, interleaved, and the ratios new/before are printed:
on a shared machine only such ratios mean something.

Run: .venv/bin/python -m bench.ingest [--batches 100] [--rounds 3] [--before TREE]
     [--engines sqlite,postgresql] [--all-cores] [--clients 4]
     [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg  # type: ignore[import-untyped]

from bench.fleet import ADMIN_TOKEN, CONFIG, meterproxy_command, meterproxy_env
from bench.loadgen import customer_id
from bench.processes import Processes, cpu_seconds, cpu_split, free_port, wait_for_port
from billing.events import format_timestamp, now_ms

BATCH = 1_000
CONCURRENCY = 4
# The local cluster (trust auth), where PostgreSQL runs get a scratch database each.
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Ingested:
    sent: int  # events posted
    stored: int  # sum of ingested_count
    seconds: float

    @property
    def per_second(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0


def event(run: str, n: int, timestamp: str) -> dict[str, Any]:
    """The n-th event of a run: names and metadata of the reference meters, in turn."""
    kind = n % 3
    base = {"event_id": f"bench-{run}-{n}", "customer_id": customer_id(n), "timestamp": timestamp}
    if kind == 0:
        return {**base, "event_name": "seats.reported", "metadata": {"seats": n % 40}}
    if kind == 1:
        return {
            **base,
            "event_name": "llm.tokens",
            "metadata": {"model": "bench", "input_tokens": 9, "output_tokens": 100 + n % 900},
        }
    return {**base, "event_name": "bandwidth", "metadata": {"bytes": 512 + n % 100_000}}


def batch_bodies(batches: int, run: str | None = None) -> list[bytes]:
    """`batches` request bodies of BATCH events each, every event_id unique."""
    run = run or uuid.uuid4().hex[:12]
    stamp = format_timestamp(now_ms())
    return [
        json.dumps({"events": [event(run, b * BATCH + i, stamp) for i in range(BATCH)]}).encode()
        for b in range(batches)
    ]


async def ingest(admin_url: str, token: str, bodies: list[bytes],
                 clients: int = CONCURRENCY) -> Ingested:
    """Post every body (`clients` at a time); RuntimeError on any non-200 answer."""
    queue = list(reversed(bodies))
    stored = [0]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        started = time.perf_counter()
        await asyncio.gather(
            *(_poster(session, admin_url, queue, stored) for _ in range(clients))
        )
        seconds = time.perf_counter() - started
    return Ingested(len(bodies) * BATCH, stored[0], seconds)


async def _poster(
    session: aiohttp.ClientSession, admin_url: str, queue: list[bytes], stored: list[int]
) -> None:
    while queue:
        body = queue.pop()
        async with session.post(f"{admin_url}/events/ingest", data=body) as response:
            answer = await response.text()
            if response.status != 200:
                raise RuntimeError(f"ingest answered {response.status}: {answer[:300]}")
            stored[0] += int(json.loads(answer)["ingested_count"])


# ------------------------------------------------------------- the script


@dataclass(frozen=True)
class Served:
    """One run against a fresh `meterproxy run`: what was stored, and the server's CPU."""

    ingested: Ingested
    cpu_seconds: float

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_seconds / max(self.ingested.stored, 1) * 1e6


@asynccontextmanager
async def scratch_database(admin_url: str) -> AsyncIterator[str]:
    """The URL of a new database on the admin URL's server, dropped on exit."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@dataclass(frozen=True)
class Server:
    """A running `meterproxy run` of the benchmark configuration: its admin URL and pid."""

    admin_url: str
    pid: int


@asynccontextmanager
async def running_server(
    workdir: Path, url: str | None, tree: Path | None = None, all_cores: bool = False,
) -> AsyncIterator[Server]:
    """A new `meterproxy run` (from `tree`, default this one) on an SQLite file in `workdir`,
    or in fleet mode on `url`, pinned alone to the first core (the clients on the others), or
    with `all_cores` free to use every core as the clients are; stopped on exit."""
    name = f"meterproxy-{uuid.uuid4().hex[:8]}"
    text = CONFIG.read_text()
    if url is not None:
        text = text.replace("  flush_interval: 50ms", f"  url: {url}\n  flush_interval: 50ms")
    config = workdir / f"{name}.yaml"
    config.write_text(text)
    admin = free_port()
    env = meterproxy_env(free_port(), admin, workdir / f"{name}.db")
    command = meterproxy_command(tree)
    processes = Processes(workdir)
    try:
        cpus = frozenset(os.sched_getaffinity(0)) if all_cores else cpu_split()[0]
        process = processes.start(name, [*command, "run", "-c", str(config)], cpus, env)
        await wait_for_port(admin, process, 30.0)
        yield Server(f"http://127.0.0.1:{admin}", process.pid)
    finally:
        processes.stop_all()


@asynccontextmanager
async def engine_url(engine: str, admin_url: str) -> AsyncIterator[str | None]:
    """Where a run on `engine` stores: None for SQLite (a file of the server's), else a
    scratch database on the server of `admin_url`, dropped on exit."""
    if engine == "sqlite":
        yield None
        return
    async with scratch_database(admin_url) as url:
        yield url


async def serve_and_ingest(
    workdir: Path, bodies: list[bytes], url: str | None, tree: Path | None = None,
    all_cores: bool = False, clients: int = CONCURRENCY,
) -> Served:
    """Post `bodies` to a new `running_server`, five warm-up batches first."""
    async with running_server(workdir, url, tree, all_cores) as server:
        await ingest(server.admin_url, ADMIN_TOKEN, batch_bodies(5))
        cpu_before = cpu_seconds(server.pid)
        done = await ingest(server.admin_url, ADMIN_TOKEN, bodies, clients)
        return Served(done, cpu_seconds(server.pid) - cpu_before)


async def one_run(engine: str, batches: int, tree: Path | None, admin_url: str,
                  all_cores: bool = False, clients: int = CONCURRENCY) -> Served:
    """A run of `batches` fresh batches on `engine` (a scratch database for PostgreSQL)."""
    bodies = batch_bodies(batches)
    with tempfile.TemporaryDirectory() as tmp:
        async with engine_url(engine, admin_url) as url:
            return await serve_and_ingest(Path(tmp), bodies, url, tree, all_cores, clients)


def _spread(values: list[float], fmt: str) -> str:
    return (f"{format(statistics.median(values), fmt)} "
            f"({format(min(values), fmt)}-{format(max(values), fmt)})")


def summary(runs: dict[tuple[str, str], list[Served]], engines: list[str],
            trees: list[str], cores: str = "one core", clients: int = CONCURRENCY) -> str:
    """Markdown: per engine and tree, medians (ranges) of events/s and CPU per event, and
    with two trees the per-round ratios of the second to the first."""
    lines = [f"ingest, {BATCH:,}-event batches, {clients} clients, meterproxy on {cores};"
             " median (range) over rounds", "",
             "| engine | tree | events/s | CPU us/event | ratio events/s | ratio CPU/event |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for engine in engines:
        first = runs[(engine, trees[0])]
        for tree in trees:
            mine = runs[(engine, tree)]
            rates = [s.ingested.per_second for s in mine]
            cpus = [s.cpu_us_per_event for s in mine]
            rate_ratio = [a.ingested.per_second / b.ingested.per_second
                          for a, b in zip(mine, first, strict=True)]
            cpu_ratio = [a.cpu_us_per_event / b.cpu_us_per_event
                         for a, b in zip(mine, first, strict=True)]
            lines.append(f"| {engine} | {tree} | {_spread(rates, ',.0f')} | {_spread(cpus, '.1f')}"
                         f" | {_spread(rate_ratio, '.2f')} | {_spread(cpu_ratio, '.2f')} |")
    return "\n".join(lines) + "\n"


async def main(batches: int, rounds: int, engines: list[str], before: Path | None,
               admin_url: str, all_cores: bool, clients: int) -> None:
    trees: dict[str, Path | None] = {"this": None}
    if before is not None:
        trees = {"before": before, "this": None}
    runs: dict[tuple[str, str], list[Served]] = {(e, t): [] for e in engines for t in trees}
    for round_ in range(rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for engine in engines:
            for label in order:
                served = await one_run(engine, batches, trees[label], admin_url, all_cores,
                                       clients)
                runs[(engine, label)].append(served)
                print(f"round {round_ + 1} {engine} {label}: "
                      f"{served.ingested.per_second:,.0f} events/s, "
                      f"{served.cpu_us_per_event:.1f} us CPU/event", flush=True)
    print()
    print(summary(runs, engines, list(trees), "every core" if all_cores else "one core",
                  clients))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--before", type=Path, default=None)
    parser.add_argument("--admin-url", default=ADMIN_URL)
    parser.add_argument("--all-cores", action="store_true",
                        help="let meterproxy use every core (default: the first one alone)")
    parser.add_argument("--clients", type=int, default=CONCURRENCY,
                        help="requests in flight at once (default %(default)s)")
    args = parser.parse_args()
    asyncio.run(main(args.batches, args.rounds, args.engines.split(","), args.before,
                     args.admin_url, args.all_cores, args.clients))
