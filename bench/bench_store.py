"""Benchmark of the SQLite event store (a script, not a test).

Prints:
- append throughput and cost: events/s and the process's CPU time per event (every thread:
  the event loop's and SQLite's writer thread, all of which a proxy pays on its core) for
  1,000-event batches of proxy-like events (two meters match each event) from 1,000
  customers into a fresh file, synchronous=FULL as in production; once as a live stream
  (timestamps within seconds, so the customers' current aggregate rows are updated in place)
  and once as a month of backfill (almost every event opens a new bucket row: the worst
  case);
- the same for proxy flushes: the two events the reference rules emit per proxied request
  (api.call and bandwidth, one meter each), 10,000 customers, in flushes of 260 events (what
  50 ms of flush_interval hold at 2,600 requests/s);
- the seal of a day: the time the writer waits once a day while the store writes a finished
  day's rollup rows from its bucket rows, for a day in which each of 10,000 customers made a
  proxied request every hour (the reference's two meters: 480,000 bucket rows);
- read latency: `meter_aggregate` for one customer over a calendar month once the month
  holds 1M events across 1,000 customers, for a bucket-aligned period (aggregates only)
  and an unaligned one (partial buckets at both edges read from raw events).

Run: .venv/bin/python bench/bench_store.py [--events 1000000] [--customers 1000]
     [--timezone UTC]   (a non-UTC zone gives 15-minute buckets: 4x the aggregate rows)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from billing.cycles import Cycle, bucket_ms
from billing.events import UsageEvent, new_proxy_event_id
from billing.meters import Meter
from billing.store.sqlite import SqliteStore

BATCH = 1_000
PROXY_FLUSH = 260
PROXY_CUSTOMERS = 10_000
HOUR_MS = 3_600_000
MONTH_START = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp() * 1000)
MONTH_END = int(datetime(2025, 4, 1, tzinfo=UTC).timestamp() * 1000)
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/images/generations", "/v1/models")

# Two meters read every api.call event, as api_calls and egress_bytes do in the reference.
METERS = (
    Meter(name="api_calls", event_name="api.call", aggregation="count", key=None,
          filter=None, measurement_unit="calls"),
    Meter(name="egress_bytes", event_name="api.call", aggregation="sum", key="bytes",
          filter=None, measurement_unit="bytes"),
)
# The reference's: api.call events are counted, bandwidth events summed.
PROXY_METERS = (
    METERS[0],
    Meter(name="egress_bytes", event_name="bandwidth", aggregation="sum", key="bytes",
          filter=None, measurement_unit="bytes"),
)


def batches(
    total: int, customers: int, span_ms: int, rng: random.Random
) -> list[list[UsageEvent]]:
    """Events spread evenly over span_ms from MONTH_START, in time order, as a proxy emits."""
    step = span_ms / total
    events = [
        UsageEvent(
            new_proxy_event_id(),
            f"cus_{rng.randrange(customers):05d}",
            "api.call",
            MONTH_START + int(i * step),
            {"method": "POST", "endpoint": rng.choice(ENDPOINTS), "status": 200,
             "response_time_ms": rng.randrange(5, 3000), "bytes": rng.randrange(200, 90_000)},
            "proxy",
        )
        for i in range(total)
    ]
    return [events[i:i + BATCH] for i in range(0, total, BATCH)]


def proxy_flushes(requests: int, rng: random.Random) -> list[list[UsageEvent]]:
    """The events of `requests` proxied requests (api.call, then bandwidth), as the reference
    rules emit them, live (a millisecond apart), in flushes of PROXY_FLUSH events."""
    events = []
    for i in range(requests):
        customer = f"cus_{rng.randrange(PROXY_CUSTOMERS):05d}"
        ts = MONTH_START + i
        events.append(UsageEvent(
            new_proxy_event_id(), customer, "api.call", ts,
            {"method": "GET", "endpoint": rng.choice(ENDPOINTS), "status": 200,
             "response_time_ms": rng.randrange(5, 3000)}, "proxy"))
        events.append(UsageEvent(new_proxy_event_id(), customer, "bandwidth", ts,
                                 {"bytes": rng.randrange(200, 90_000)}, "proxy"))
    return [events[i:i + PROXY_FLUSH] for i in range(0, len(events), PROXY_FLUSH)]


async def append_all(store: SqliteStore, work: list[list[UsageEvent]], label: str) -> None:
    """Append every batch, one transaction each, and print the rate and the CPU per event."""
    started, cpu_started = time.perf_counter(), time.process_time()
    for batch in work:
        await store.append(batch, batch[-1].timestamp_ms)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    total = sum(len(batch) for batch in work)
    print(f"append, {label}: {total:,} events in batches of {len(work[0]):,}: "
          f"{total / seconds:,.0f} events/s, {cpu / total * 1e6:.1f} us CPU/event")


def busy_day(rng: random.Random) -> list[list[UsageEvent]]:
    """Every customer's request in every hour of the day from MONTH_START, as the reference
    rules store it (api.call and bandwidth), in batches of BATCH events."""
    events = []
    for hour in range(24):
        for customer in range(PROXY_CUSTOMERS):
            ts = MONTH_START + hour * HOUR_MS + customer
            for name, metadata in (("api.call", {"status": 200}),
                                   ("bandwidth", {"bytes": rng.randrange(200, 90_000)})):
                events.append(UsageEvent(new_proxy_event_id(), f"cus_{customer:05d}", name, ts,
                                         metadata, "proxy"))
    return [events[i:i + BATCH] for i in range(0, len(events), BATCH)]


async def time_seal(store: SqliteStore, rng: random.Random) -> None:
    """Fill one day, then time its seal (every meter's rollup rows from its bucket rows)."""
    for batch in busy_day(rng):
        await store.append(batch, batch[-1].timestamp_ms)
    started, cpu_started = time.perf_counter(), time.process_time()
    await store.seal(MONTH_START + 24 * HOUR_MS)
    print(f"seal of one day, {PROXY_CUSTOMERS:,} customers x 24 hours x 2 meters of bucket"
          f" rows: {time.perf_counter() - started:.2f} s"
          f" ({time.process_time() - cpu_started:.2f} s CPU)")


async def latencies_ms(
    store: SqliteStore, customers: int, start: int, end: int, rng: random.Random
) -> list[float]:
    found = []
    for _ in range(500):
        customer = f"cus_{rng.randrange(customers):05d}"
        started = time.perf_counter()
        await store.meter_aggregate("egress_bytes", customer, start, end)
        found.append((time.perf_counter() - started) * 1000)
    return found


def summary(values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=100)
    return f"median {statistics.median(values):.2f} ms, p99 {cuts[98]:.2f} ms"


async def main(events: int, customers: int, tz: ZoneInfo) -> None:
    rng = random.Random(7)
    size = bucket_ms([Cycle(calendar="monthly")], tz)
    with tempfile.TemporaryDirectory() as tmp:
        live = SqliteStore(str(Path(tmp) / "live.db"), METERS, size)
        await live.open()
        try:
            await append_all(live, batches(events // 10, customers, 2_000, rng), "live stream")
        finally:
            await live.close()
        proxy = SqliteStore(str(Path(tmp) / "proxy.db"), PROXY_METERS, size)
        await proxy.open()
        try:
            await append_all(proxy, proxy_flushes(events // 20, rng), "proxy flushes")
        finally:
            await proxy.close()
        day = SqliteStore(str(Path(tmp) / "day.db"), PROXY_METERS, size)
        await day.open()
        try:
            await time_seal(day, rng)
        finally:
            await day.close()
        store = SqliteStore(str(Path(tmp) / "month.db"), METERS, size)
        await store.open()
        try:
            work = batches(events, customers, MONTH_END - MONTH_START, rng)
            await append_all(store, work, "a month of backfill")
            print(f"meter_aggregate, one customer, one month ({size // 60_000}-minute buckets):")
            aligned = await latencies_ms(store, customers, MONTH_START, MONTH_END, rng)
            print(f"  aligned period:   {summary(aligned)}")
            unaligned = await latencies_ms(
                store, customers, MONTH_START + 37 * 60_000, MONTH_END - 13 * 60_000, rng
            )
            print(f"  unaligned period: {summary(unaligned)}")
        finally:
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--timezone", default="UTC")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.customers, ZoneInfo(args.timezone)))
