"""Benchmark of a /metrics scrape with many customers (a script, not a test).

Two stores, each behind a MeterProxy with `metrics.customer_labels: true` and
`max_customers: 100`, timing `GET /metrics` over HTTP as Prometheus sends it:
- small: N customers (default 10,000), i % 5 + 1 events each (about 30,000) on two meters,
  stored through the event writer of the running proxy;
- large (with --large): the store of bench/bench_billing.py, 10M events of 10,000 customers
  over a month on the reference meters (copied from its cache under /tmp; skipped when the
  cache is absent), the clock half an hour before the month ends.
For each it prints:
- first: the first scrape of a started proxy, which waits for the open-usage table's first
  whole read (large) or re-reads the customers it has just learnt of (small);
- cold: scrapes more than a second apart with `--traffic` events (default 1,000) of random
  customers stored in between, so each one folds a changed table (the figure that matters;
  the target is under 100 ms at 10,000 customers);
- warm: a scrape within the same second, served from the snapshot;
- rollover (large): the first scrape after the month ended, which re-reads every customer
  in its new period.
It also prints the number of `meterproxy_meter_usage` series (bounded by the cap) and checks
that the usage shown equals a whole read of the store (`engine.open_usage`).

Run: .venv/bin/python bench/bench_scrape.py [--customers 10000] [--scrapes 7]
     [--traffic 1000] [--large] [--cache /tmp/meterproxy-bench-billing-10000-10000000.db]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import shutil
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # `python bench/x.py` puts bench/ first; the repository must be there

from bench.bench_billing import MONTH_END, Clock, bench_config  # noqa: E402
from billing.events import UsageEvent, new_proxy_event_id, now_ms  # noqa: E402
from proxy.app import MeterProxy  # noqa: E402
from proxy.config import Config, load_config  # noqa: E402

BATCH = 1_000
CONFIG = """\
proxy: {{listen: "127.0.0.1:0", upstream: "http://127.0.0.1:9"}}
admin: {{listen: "127.0.0.1:0", token: bench-admin-token}}
metrics: {{customer_labels: true, max_customers: 100}}
storage: {{path: "{db}", flush_interval: 50ms}}
customers:
  identify: ["${{request.header.x-customer-id}}"]
rules: []
meters:
  - {{name: api_calls, event_name: api.call, aggregation: {{type: count}}}}
  - {{name: egress_bytes, event_name: api.call, aggregation: {{type: sum, key: bytes}}}}
plans:
  - name: pro
    currency: USD
    cycle: monthly
    prices: [{{meter: api_calls, price_per_unit: "0.001"}}]
billing: {{default_plan: pro}}
"""


def customer(i: int) -> str:
    return f"cus_{i:05d}"


def calls(customers: int, stamp_ms: int) -> list[UsageEvent]:
    """Per customer i: i % 5 + 1 calls of 1000 + i bytes, all at `stamp_ms`."""
    return [
        UsageEvent(new_proxy_event_id(), customer(i), "api.call", stamp_ms, {"bytes": 1000 + i},
                   source="proxy")
        for i in range(customers)
        for _ in range(i % 5 + 1)
    ]


def traffic(count: int, customers: int, stamp_ms: int, rng: random.Random) -> list[UsageEvent]:
    """`count` calls of random customers at `stamp_ms`."""
    return [
        UsageEvent(new_proxy_event_id(), customer(rng.randrange(customers)), "api.call",
                   stamp_ms, {"bytes": rng.randrange(200, 90_000)}, source="proxy")
        for _ in range(count)
    ]


async def store(mp: MeterProxy, events: list[UsageEvent]) -> None:
    """Store through the running proxy's event writer, as proxied and ingested events go."""
    for start in range(0, len(events), BATCH):
        await mp.writer.submit_durable(events[start : start + BATCH])


async def timed_scrape(session: aiohttp.ClientSession, url: str) -> tuple[float, str]:
    began = time.perf_counter()
    async with session.get(url) as response:
        text = await response.text()
    return (time.perf_counter() - began) * 1000, text


def usage_shown(text: str) -> dict[str, float]:
    """meter -> the total meterproxy_meter_usage sample of a scrape."""
    found = {}
    for line in text.splitlines():
        if line.startswith('meterproxy_meter_usage{meter="') and "customer=" not in line:
            labels, value = line.rsplit(" ", 1)
            found[labels.split('"')[1]] = float(value)
    return found


async def check(mp: MeterProxy, text: str, now: int) -> None:
    """Fail unless the scrape shows what a whole read of the store finds."""
    whole = await mp.engine.open_usage(now)
    expected = {meter: float(sum(q.values(), Decimal(0))) for meter, q in whole.items()}
    assert usage_shown(text) == expected, (usage_shown(text), expected)


async def scrapes(mp: MeterProxy, scrapes: int, customers: int, events: int,
                  clock: Clock | None) -> tuple[list[float], list[float], str]:
    """Cold scrapes with `events` stored before each, and a warm one after each."""
    url = f"http://127.0.0.1:{mp.port('admin')}/metrics"
    rng = random.Random(7)
    cold: list[float] = []
    warm: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(scrapes):
            await store(mp, traffic(events, customers, clock.now if clock else now_ms(), rng))
            await asyncio.sleep(1.1)  # let the snapshot expire
            if clock:  # on the proxy's clock too
                clock.now += 1100
            ms, text = await timed_scrape(session, url)
            cold.append(ms)
            warm.append((await timed_scrape(session, url))[0])
    return cold, warm, text


def report(title: str, first: float, cold: list[float], warm: list[float], text: str) -> None:
    series = sum(1 for line in text.splitlines() if line.startswith("meterproxy_meter_usage{"))
    print(title)
    print(f"  meterproxy_meter_usage series: {series}")
    print(f"  first scrape: {first:.1f} ms")
    for name, values in (("cold", cold), ("warm", warm)):
        print(
            f"  {name} scrape: median {statistics.median(values):.1f} ms, "
            f"min {min(values):.1f} ms, max {max(values):.1f} ms ({len(values)} scrapes)"
        )


async def small(customers: int, count: int, events: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(CONFIG.format(db=Path(tmp) / "bench.db"))
        mp = MeterProxy(load_config(path), registry=CollectorRegistry())
        await mp.start()
        try:
            batch = calls(customers, now_ms())
            await store(mp, batch)
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{mp.port('admin')}/metrics"
                first, _ = await timed_scrape(session, url)
            cold, warm, text = await scrapes(mp, count, customers, events, None)
            await check(mp, text, now_ms())
        finally:
            await mp.stop()
    report(f"{customers:,} customers, {len(batch):,} events (+{events:,} per scrape), "
           "2 meters, max_customers 100", first, cold, warm, text)


def large_config(db: Path) -> Config:
    config = bench_config(db)
    metrics = dataclasses.replace(config.metrics, customer_labels=True, max_customers=100)
    return dataclasses.replace(config, metrics=metrics)


async def large(cache: Path, count: int, events: int) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        db = Path(workdir) / "billing.db"
        shutil.copyfile(cache, db)  # a proxy writes (cycles, events): keep the cache clean
        clock = Clock(MONTH_END - 1_800_000)
        mp = MeterProxy(large_config(db), registry=CollectorRegistry(), clock=clock)
        await mp.start()
        try:
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{mp.port('admin')}/metrics"
                first, _ = await timed_scrape(session, url)
            cold, warm, text = await scrapes(mp, count, 10_000, events, clock)
            await check(mp, text, clock.now)
            clock.now = MONTH_END + 1
            await asyncio.sleep(1.1)
            async with aiohttp.ClientSession() as session:
                rollover, after = await timed_scrape(session, url)
            await check(mp, after, clock.now)
        finally:
            await mp.stop()
    report(f"10,000 customers, 10M events (+{events:,} per scrape), 7 meters, "
           "max_customers 100", first, cold, warm, text)
    print(f"  rollover scrape (every customer re-read in its new period): {rollover:.1f} ms")


async def main(args: argparse.Namespace) -> None:
    await small(args.customers, args.scrapes, args.traffic)
    if not args.large:
        return
    if not args.cache.exists():
        print(f"no {args.cache}: run bench/bench_billing.py first to build it")
        return
    await large(args.cache, args.scrapes, args.traffic)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=7)
    parser.add_argument("--traffic", type=int, default=1_000)
    parser.add_argument("--large", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir())
                        / "meterproxy-bench-billing-10000-10000000.db")
    asyncio.run(main(parser.parse_args()))
