"""Benchmark of the PostgreSQL event store beside the SQLite one (a script, not a test).

Prints, and writes to bench/results/store_pg.md, two tables of events/s for both engines:
- store append: 1,000-event batches of proxy-like events (two meters read each event) from
  1,000 customers, one transaction per batch, on the same events: once as a live stream
  (the customers' current aggregate rows are updated in place) and once as a month of
  backfill (almost every event opens a new bucket row, and PostgreSQL seals a day's
  rollups every few batches: a month passes in seconds);
- ingest: `POST /events/ingest` with 1,000-event batches from 4 clients (bench/ingest.py)
  into `meterproxy run` with the benchmark configuration, pinned to one core, on an SQLite
  file and then in fleet mode on PostgreSQL (one replica).
PostgreSQL runs with its defaults (synchronous_commit on), SQLite with synchronous=FULL, as
in production. Each PostgreSQL measurement uses a database created for it (dropped after) on
the server of --admin-url (default: the local cluster, trust auth).

Run: .venv/bin/python bench/bench_store_pg.py [--events 200000] [--customers 1000]
     [--ingest-batches 100] [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import asyncpg  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # `python bench/x.py` puts bench/ first; the repository must be there

from bench import ingest  # noqa: E402
from bench.bench_store import BATCH, METERS, MONTH_END, MONTH_START, batches  # noqa: E402
from bench.fleet import ADMIN_TOKEN, CONFIG, PYTHON  # noqa: E402
from bench.processes import Processes, cpu_split, free_port, wait_for_port  # noqa: E402
from billing.cycles import Cycle, bucket_ms  # noqa: E402
from billing.events import UsageEvent  # noqa: E402
from billing.store.base import Store  # noqa: E402
from billing.store.postgres import PostgresStore  # noqa: E402
from billing.store.sqlite import SqliteStore  # noqa: E402

Workload = list[list[UsageEvent]]
RESULTS = ROOT / "bench" / "results" / "store_pg.md"


async def append_rate(store: Store, work: Workload) -> float:
    """Events/s of appending every batch, one transaction each."""
    started = time.perf_counter()
    for batch in work:
        await store.append(batch, batch[-1].timestamp_ms)
    return sum(len(batch) for batch in work) / (time.perf_counter() - started)


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


async def rates(make: Callable[[str], Store], work: dict[str, Workload]) -> dict[str, float]:
    """Each workload's append rate into a fresh store of its own."""
    found = {}
    for label, batches_ in work.items():
        store = make(label)
        await store.open()
        try:
            found[label] = await append_rate(store, batches_)
        finally:
            await store.close()
    return found


async def append_rates(events: int, customers: int,
                       admin_url: str) -> dict[str, tuple[float, float]]:
    """workload -> (SQLite, PostgreSQL) append rates."""
    rng = random.Random(7)
    size = bucket_ms([Cycle(calendar="monthly")], ZoneInfo("UTC"))
    work = {
        "live stream": batches(events, customers, 2_000 * events // 100_000, rng),
        "a month of backfill": batches(events, customers, MONTH_END - MONTH_START, rng),
    }
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = await rates(
            lambda label: SqliteStore(str(Path(tmp) / f"{hash(label)}.db"), METERS, size), work
        )
    postgres = {}
    for label, batches_ in work.items():
        async with scratch_database(admin_url) as url:
            postgres |= await rates(lambda _, url=url: PostgresStore(url, METERS, size),
                                    {label: batches_})
    return {label: (sqlite[label], postgres[label]) for label in work}


async def ingest_rate(workdir: Path, bodies: list[bytes], url: str | None) -> float:
    """Events/s through `meterproxy run` (SQLite, or fleet mode on `url`), pinned like the
    main benchmark: meterproxy alone on the first core, the clients on the others."""
    text = CONFIG.read_text()
    if url is not None:
        text = text.replace("  flush_interval: 50ms", f"  url: {url}\n  flush_interval: 50ms")
    config = workdir / f"meterproxy-{'pg' if url else 'sqlite'}.yaml"
    config.write_text(text)
    admin = free_port()
    env = {"BENCH_PROXY_LISTEN": f"127.0.0.1:{free_port()}",
           "BENCH_ADMIN_LISTEN": f"127.0.0.1:{admin}", "METERPROXY_ADMIN_TOKEN": ADMIN_TOKEN,
           "BENCH_DB": str(workdir / f"{config.stem}.db")}
    processes = Processes(workdir)
    server_cpus, _ = cpu_split()
    try:
        process = processes.start(config.stem, [PYTHON, "-m", "proxy.cli", "run", "-c",
                                                str(config)], server_cpus, env)
        await wait_for_port(admin, process, 30.0)
        done = await ingest.ingest(f"http://127.0.0.1:{admin}", ADMIN_TOKEN, bodies)
    finally:
        processes.stop_all()
    return done.per_second


async def ingest_rates(batches_: int, admin_url: str) -> tuple[float, float]:
    """(SQLite, PostgreSQL) ingest rates, each on fresh events."""
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = await ingest_rate(Path(tmp), ingest.batch_bodies(batches_), None)
        async with scratch_database(admin_url) as url:
            postgres = await ingest_rate(Path(tmp), ingest.batch_bodies(batches_), url)
    return sqlite, postgres


def report(events: int, appends: dict[str, tuple[float, float]], ingested: tuple[float, float],
           batches_: int) -> str:
    """The results as markdown (what main prints and writes to RESULTS)."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    ingest_title = (f"ingest through `meterproxy run`, {batches_ * ingest.BATCH:,} events in "
                    f"{ingest.BATCH:,}-event batches, {ingest.CONCURRENCY} clients (events/s)")
    lines = [
        f"## store benchmark: SQLite and PostgreSQL ({when})", "",
        f"append, {events:,} events in batches of {BATCH:,}, one replica (events/s)", "",
        "| workload | SQLite | PostgreSQL |", "| --- | ---: | ---: |",
        *(f"| {label} | {a:,.0f} | {b:,.0f} |" for label, (a, b) in appends.items()), "",
        ingest_title, "",
        "| engine | events/s |", "| --- | ---: |",
        f"| SQLite | {ingested[0]:,.0f} |",
        f"| PostgreSQL (fleet mode, one replica) | {ingested[1]:,.0f} |", "",
        f"- {os.cpu_count()} cores, Python {platform.python_version()}; PostgreSQL on the same"
        " machine",
    ]
    return "\n".join(lines) + "\n"


async def main(events: int, customers: int, batches_: int, admin_url: str) -> None:
    text = report(events, await append_rates(events, customers, admin_url),
                  await ingest_rates(batches_, admin_url), batches_)
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--ingest-batches", type=int, default=100)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.customers, args.ingest_batches, args.admin_url))
