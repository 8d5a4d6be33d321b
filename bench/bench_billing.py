"""Benchmark of the billing engine (a script, not a test).

Builds once, and caches, a store of 10,000 customers and 10M events spread over one month
(January 2026) on the reference meters, every event ingested when it happened, as a proxy
and an application would send them. Then, on a copy of that file, in one meterproxy process
(bench/meterproxy.bench.yaml: the reference plan, monthly, 1 h grace) whose clock the script
sets, it prints:
- the usage preview: p50/p99 of GET /v1/customers/{id}/usage through the admin API, for
  random customers, at the end of the month (the whole month is the open period);
- /metrics' open-period usage: `engine.open_usage` over every customer;
- the full period close: POST /v1/billing/run when the month has ended (every customer's
  draft) and after the grace period (every customer's final statement), and a run with
  nothing due.

Run: .venv/bin/python bench/bench_billing.py [--events 10000000] [--customers 10000]
     [--previews 1000] [--cache /tmp/meterproxy-bench-billing-10000-10000000.db]
The first run generates the cache (about 10 minutes); later runs reuse it, and so does
`make bench`'s billing phase, which times the period close on a copy of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from billing.events import MetadataValue, UsageEvent
from proxy.app import MeterProxy, store_for
from proxy.config import Config, load_config

CONFIG = Path(__file__).with_name("meterproxy.bench.yaml")
TOKEN = "bench-billing-token"
MONTH_START = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
MONTH_END = int(datetime(2026, 2, 1, tzinfo=UTC).timestamp() * 1000)
HOUR = 3_600_000
BATCH = 10_000
# Share of each event name, as the reference rules and an application would emit them.
KINDS = (("api.call", 40), ("bandwidth", 40), ("llm.tokens", 12), ("image.generated", 4),
         ("seats.reported", 2), ("storage.snapshot", 2))


def bench_config(db: Path) -> Config:
    environ = {"BENCH_DB": str(db), "BENCH_PROXY_LISTEN": "127.0.0.1:0",
               "BENCH_ADMIN_LISTEN": "127.0.0.1:0", "METERPROXY_ADMIN_TOKEN": TOKEN,
               "BENCH_UPSTREAM": "http://127.0.0.1:9"}
    return load_config(CONFIG, environ={**os.environ, **environ})


def customer(i: int) -> str:
    return f"cus_{i:05d}"


def metadata(kind: str, rng: random.Random) -> dict[str, MetadataValue]:
    if kind == "api.call":
        return {"method": "POST", "endpoint": "/v1/chat/completions", "status": 200,
                "response_time_ms": rng.randrange(5, 3000)}
    if kind == "bandwidth":
        return {"bytes": rng.randrange(200, 90_000)}
    if kind == "llm.tokens":
        return {"model": "gpt-4o", "input_tokens": rng.randrange(10, 4000),
                "output_tokens": rng.randrange(10, 2000)}
    if kind == "image.generated":
        return {"quality": rng.choice(("hd", "standard")), "images": rng.randrange(1, 5),
                "model": "dall-e-3"}
    if kind == "seats.reported":
        return {"seats": rng.randrange(1, 60)}
    return {"gb": Decimal(rng.randrange(0, 100_000)) / 100}


def batches(events: int, customers: int, rng: random.Random) -> Iterator[list[UsageEvent]]:
    """The month's events in time order, BATCH at a time."""
    names = [name for name, share in KINDS for _ in range(share)]
    step = (MONTH_END - MONTH_START - HOUR) / events
    batch: list[UsageEvent] = []
    for n in range(events):
        kind = rng.choice(names)
        batch.append(UsageEvent(f"b{n}", customer(rng.randrange(customers)), kind,
                                MONTH_START + int(n * step), metadata(kind, rng)))
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


async def generate(cache: Path, events: int, customers: int) -> None:
    """Store the month's events into `cache`, each batch ingested at its last timestamp."""
    work = cache.with_suffix(".partial")
    work.unlink(missing_ok=True)
    store = store_for(bench_config(work))
    await store.open()
    started = time.perf_counter()
    try:
        for i, batch in enumerate(batches(events, customers, random.Random(11))):
            await store.append(batch, batch[-1].timestamp_ms + 50)
            if i % 100 == 0:
                done = (i + 1) * BATCH
                print(f"  {done:,} events stored, {done / (time.perf_counter() - started):,.0f}/s",
                      flush=True)
    finally:
        await store.close()
    work.rename(cache)


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@dataclass(frozen=True)
class Figures:
    """What one measurement on a copy of the cached store found."""

    previews: int  # 0: none timed (then p50 and p99 are None)
    preview_p50_ms: float | None
    preview_p99_ms: float | None
    open_usage_customers: int
    open_usage_s: float
    runs: tuple[tuple[str, float, int, int], ...]  # (label, seconds, drafted, finalized)

    def run(self, label: str) -> tuple[float, int, int]:
        """The run called `label`: (seconds, drafted, finalized)."""
        return next((s, d, f) for name, s, d, f in self.runs if name == label)

    def lines(self) -> list[str]:
        found = []
        if self.preview_p50_ms is not None and self.preview_p99_ms is not None:
            found.append(f"usage preview through the admin API ({self.previews} customers): "
                         f"p50 {self.preview_p50_ms:.2f} ms, p99 {self.preview_p99_ms:.2f} ms")
        found.append(f"open-period usage of {self.open_usage_customers:,} customers (/metrics): "
                     f"{self.open_usage_s:.2f} s")
        found += [f"period close, {label}: {seconds:.2f} s (drafted {drafted:,}, "
                  f"finalized {finalized:,})" for label, seconds, drafted, finalized in self.runs]
        return found


DRAFTS = "month ended: every draft"
FINALS = "grace over: every final statement"
RUNS = ((DRAFTS, MONTH_END + 1), (FINALS, MONTH_END + HOUR + 1),
        ("nothing due", MONTH_END + HOUR + 2))


def default_cache(events: int = 10_000_000, customers: int = 10_000) -> Path:
    """Where the store of `events` events of `customers` customers is cached."""
    return Path(tempfile.gettempdir()) / f"meterproxy-bench-billing-{customers}-{events}.db"


async def measure_copy(cache: Path, customers: int, previews: int) -> Figures:
    """`measure` on a copy of `cache` (the runs write statements: the cache stays clean)."""
    with tempfile.TemporaryDirectory() as workdir:
        db = Path(workdir) / "billing.db"
        await asyncio.to_thread(shutil.copyfile, cache, db)  # seconds for 3 GB
        return await measure(db, customers, previews)


async def measure(db: Path, customers: int, previews: int) -> Figures:
    clock = Clock(MONTH_END - HOUR // 2)
    mp = MeterProxy(bench_config(db), registry=CollectorRegistry(), clock=clock)
    await mp.start()
    try:
        await mp.scheduler.finished(1)  # its first run (nothing due) is over
        admin = f"http://127.0.0.1:{mp.port('admin')}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            p50, p99 = (None, None) if previews == 0 else await preview_latency(
                session, admin, customers, previews)
            started = time.perf_counter()
            usage = await mp.engine.open_usage(clock.now)
            open_usage_s = time.perf_counter() - started
            runs = []
            for label, at in RUNS:
                clock.now = at
                runs.append((label, *await timed_run(session, admin)))
    finally:
        await mp.stop()
    return Figures(previews, p50, p99, len(usage["api_calls"]), open_usage_s, tuple(runs))


async def preview_latency(session: aiohttp.ClientSession, admin: str, customers: int,
                          previews: int) -> tuple[float, float]:
    """p50 and p99 (ms) of `previews` usage previews of random customers."""
    rng = random.Random(3)
    timings = []
    for _ in range(previews):
        url = f"{admin}/v1/customers/{customer(rng.randrange(customers))}/usage"
        started = time.perf_counter()
        async with session.get(url) as response:
            body: Any = await response.json()
            assert response.status == 200, body
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return statistics.median(timings), timings[max(int(len(timings) * 0.99) - 1, 0)]


async def timed_run(session: aiohttp.ClientSession, admin: str) -> tuple[float, int, int]:
    """One billing run: its seconds, and the statements it drafted and finalized."""
    started = time.perf_counter()
    async with session.post(f"{admin}/v1/billing/run") as response:
        result = await response.json()
        assert response.status == 200, result
    return time.perf_counter() - started, result["drafted"], result["finalized"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--previews", type=int, default=1000)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    cache = args.cache or default_cache(args.events, args.customers)
    if not cache.exists():
        print(f"generating {args.events:,} events of {args.customers:,} customers into {cache}")
        await generate(cache, args.events, args.customers)
    figures = await measure_copy(cache, args.customers, args.previews)
    print("\n".join(figures.lines()))


if __name__ == "__main__":
    asyncio.run(main())
