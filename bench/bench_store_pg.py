"""Benchmark of the PostgreSQL event store beside the SQLite one (a script, not a test).

Prints, and writes to bench/results/store_pg.md, two tables of events/s for both engines:
- store append: 1,000-event batches of proxy-like events (two meters read each event) from
  1,000 customers, one transaction per batch, on the same events: once as a live stream
  (the customers' current aggregate rows are updated in place) and once as a month of
  backfill (almost every event opens a new bucket row, and PostgreSQL seals a day's
  rollups every few batches: a month passes in seconds);
- ingest: `POST /events/ingest` with 1,000-event batches from 4 clients (bench/ingest.py)
  into `meterproxy run` with the benchmark configuration, pinned to one core, on an SQLite
  file and then in fleet mode on PostgreSQL (one replica); `python -m bench.ingest` measures
  only this, over several rounds, optionally against another tree.
PostgreSQL runs with its defaults (synchronous_commit on), SQLite with synchronous=FULL, as
in production. Each PostgreSQL measurement uses a database created for it (dropped after) on
the server of --admin-url (default: the local cluster, trust auth).

Run: .venv/bin/python bench/bench_store_pg.py [--events 200000] [--customers 1000]
     [--ingest-batches 100] [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # `python bench/x.py` puts bench/ first; the repository must be there

from bench import ingest  # noqa: E402
from bench.bench_store import BATCH, METERS, MONTH_END, MONTH_START, batches  # noqa: E402
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


def _postgres_store(url: str, size: int, label: str) -> Store:
    return PostgresStore(url, METERS, size)


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
    postgres: dict[str, float] = {}
    for label, batches_ in work.items():
        async with ingest.scratch_database(admin_url) as url:
            postgres |= await rates(functools.partial(_postgres_store, url, size),
                                    {label: batches_})
    return {label: (sqlite[label], postgres[label]) for label in work}


async def ingest_rates(batches_: int, admin_url: str) -> tuple[float, float]:
    """(SQLite, PostgreSQL) ingest rates, each on fresh events."""
    sqlite = await ingest.one_run("sqlite", batches_, None, admin_url)
    postgres = await ingest.one_run("postgresql", batches_, None, admin_url)
    return sqlite.ingested.per_second, postgres.ingested.per_second


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
    parser.add_argument("--admin-url", default=ingest.ADMIN_URL)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.customers, args.ingest_batches, args.admin_url))
