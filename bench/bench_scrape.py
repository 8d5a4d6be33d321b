"""Benchmark of a /metrics scrape with many customers (a script, not a test).

Starts a MeterProxy with `metrics.customer_labels: true` and `max_customers: 100`, stores
events for N customers (default 10,000) in the open period of two meters, then times
`GET /metrics` over HTTP as Prometheus sends it:
- cold: the usage snapshot is older than a second, so the scrape re-reads the open-period
  usage from the store's aggregates and folds the top customers (the figure that matters;
  the target is under 100 ms at 10,000 customers);
- warm: a scrape within the same second, served from the snapshot.
It also prints the number of `meterproxy_meter_usage` series (bounded by the cap).

Run: .venv/bin/python bench/bench_scrape.py [--customers 10000] [--scrapes 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from billing.events import UsageEvent, new_proxy_event_id, now_ms
from proxy.app import MeterProxy
from proxy.config import load_config

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


def events(customers: int, stamp_ms: int) -> list[UsageEvent]:
    """Per customer i: i % 5 + 1 calls of 1000 + i bytes, all at `stamp_ms`."""
    return [
        UsageEvent(
            new_proxy_event_id(),
            f"cus_{i:05d}",
            "api.call",
            stamp_ms,
            {"bytes": 1000 + i},
            source="proxy",
        )
        for i in range(customers)
        for _ in range(i % 5 + 1)
    ]


async def store_events(mp: MeterProxy, customers: int) -> int:
    batch = events(customers, now_ms())
    for start in range(0, len(batch), BATCH):
        await mp.store.append(batch[start : start + BATCH], now_ms())
    return len(batch)


async def timed_scrape(session: aiohttp.ClientSession, url: str) -> tuple[float, str]:
    began = time.perf_counter()
    async with session.get(url) as response:
        text = await response.text()
    return (time.perf_counter() - began) * 1000, text


async def main(customers: int, scrapes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(CONFIG.format(db=Path(tmp) / "bench.db"))
        mp = MeterProxy(load_config(path), registry=CollectorRegistry())
        await mp.start()
        try:
            stored = await store_events(mp, customers)
            url = f"http://127.0.0.1:{mp.port('admin')}/metrics"
            cold: list[float] = []
            warm: list[float] = []
            async with aiohttp.ClientSession() as session:
                for _ in range(scrapes):
                    await asyncio.sleep(1.1)  # let the snapshot expire
                    ms, text = await timed_scrape(session, url)
                    cold.append(ms)
                    warm.append((await timed_scrape(session, url))[0])
        finally:
            await mp.stop()
    series = sum(1 for line in text.splitlines() if line.startswith("meterproxy_meter_usage{"))
    print(f"{customers} customers, {stored} events, 2 meters, max_customers 100")
    print(f"meterproxy_meter_usage series: {series}")
    for name, values in (("cold", cold), ("warm", warm)):
        print(
            f"{name} scrape: median {statistics.median(values):.1f} ms, "
            f"min {min(values):.1f} ms, max {max(values):.1f} ms ({len(values)} scrapes)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.customers, args.scrapes))
