"""Benchmark of the PostgreSQL event store beside the SQLite one (a script, not a test).

Prints a table of append throughput in events/s, 1,000-event batches of proxy-like events
(two meters read each event) from 1,000 customers, one transaction per batch, for both
engines on the same events: once as a live stream (the customers' current aggregate rows
are updated in place) and once as a month of backfill (almost every event opens a new bucket
row). PostgreSQL runs with its defaults (synchronous_commit on), SQLite with
synchronous=FULL, as in production.

The PostgreSQL store goes into a database created for the run (and dropped after it) on the
server of --admin-url (default: the local cluster, trust auth).

Run: .venv/bin/python bench/bench_store_pg.py [--events 200000] [--customers 1000]
     [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import asyncpg  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # `python bench/x.py` puts bench/ first; the repository must be there

from bench.bench_store import BATCH, METERS, MONTH_END, MONTH_START, batches  # noqa: E402
from billing.cycles import Cycle, bucket_ms  # noqa: E402
from billing.events import UsageEvent  # noqa: E402
from billing.store.base import Store  # noqa: E402
from billing.store.postgres import PostgresStore  # noqa: E402
from billing.store.sqlite import SqliteStore  # noqa: E402

Workload = list[list[UsageEvent]]


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


async def main(events: int, customers: int, admin_url: str) -> None:
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
    print(f"append, {events:,} events in batches of {BATCH:,} (events/s)\n")
    print("| workload | SQLite | PostgreSQL |")
    print("| --- | ---: | ---: |")
    for label in work:
        print(f"| {label} | {sqlite[label]:,.0f} | {postgres[label]:,.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.customers, args.admin_url))
