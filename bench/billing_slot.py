"""The billing rows. The usage preview is measured on the running meterproxy once the soak
has stored its events (10,000 customers, the reference monthly plan). The full period close
needs periods that have ended over 10M events, which a 10-minute run cannot build: it is
timed on a copy of the store `bench/bench_billing.py` builds and caches (about 10 minutes,
once per machine) when that cache exists; otherwise its row says "not measured yet" and
how to build it. Before the billing routes existed both rows said so."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench import bench_billing
from bench.loadgen import CUSTOMERS, customer_id
from bench.report import NOT_MEASURED, Row, verdict
from bench.stats import percentile

TARGET = "see the billing issue"
CLOSE_FIGURE = "billing: full period close, 10,000 customers / 10M events (s)"
CLOSE_WHY = ("needs ended periods over 10M events: run bench/bench_billing.py once"
             " (about 10 minutes) to cache them")
CLOSE_TARGET = "< 10 s"  # the billing issue's, for every customer's statement


async def route_exists(session: aiohttp.ClientSession, method: str, url: str) -> bool:
    """True unless the admin app answers 404 for `url` (a 405 means the route exists)."""
    async with session.request(method, url) as response:
        return response.status != 404


async def preview_ms(session: aiohttp.ClientSession, admin_url: str, customer: str) -> float:
    """Milliseconds for one usage preview; RuntimeError unless it answers 200."""
    started = time.perf_counter()
    async with session.get(f"{admin_url}/v1/customers/{customer}/usage") as response:
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"usage preview of {customer}: {response.status} {body[:200]!r}")
    return (time.perf_counter() - started) * 1000


async def rows(admin_url: str, token: str, customers: Sequence[str], events: int,
               cache: Path | None = None) -> list[Row]:
    """The preview row (timed once per customer in `customers` when the route exists) and
    the close row, timed on a copy of `cache` (bench_billing's store; None: not built).
    `events` is about how many events the running store holds."""
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        # The other method: a 405 proves the route whether or not the customer exists,
        # and without running billing.
        usage = await route_exists(session, "POST", f"{admin_url}/v1/customers/probe/usage")
        close = await route_exists(session, "GET", f"{admin_url}/v1/billing/run")
        found = [await preview_ms(session, admin_url, c) for c in (customers if usage else ())]
    figure = f"billing: usage preview, {CUSTOMERS:,} customers, ~{events / 1e6:.1f}M events (ms)"
    if not close:
        return [_preview_row(figure, found), _close_row("route not built yet")]
    if cache is None:
        return [_preview_row(figure, found), _close_row(CLOSE_WHY)]
    return [_preview_row(figure, found), await _timed_close_row(cache)]


def cached_store() -> Path | None:
    """bench_billing's cached 10M-event store, if this machine has built it."""
    cache = bench_billing.default_cache()
    return cache if cache.exists() else None


def sample_customers(n: int, seed: int = 7) -> list[str]:
    """`n` benchmark customer ids drawn at random (repeatably) from all 10,000."""
    rng = random.Random(seed)
    return [customer_id(rng.randrange(CUSTOMERS)) for _ in range(n)]


def _preview_row(figure: str, found: list[float]) -> Row:
    if not found:
        return Row(figure=figure, meterproxy=NOT_MEASURED, result="route not built yet")
    p50, p99 = percentile(found, 50), percentile(found, 99)
    return Row(
        figure=figure,
        meterproxy=f"p50 {p50:.1f}, p99 {p99:.1f}",
        result=f"{len(found)} customers",
        target=TARGET,
    )


def _close_row(why: str) -> Row:
    return Row(figure=CLOSE_FIGURE, meterproxy=NOT_MEASURED, result=why, target=TARGET)


async def _timed_close_row(cache: Path) -> Row:
    found = await bench_billing.measure_copy(cache, CUSTOMERS, previews=0)
    drafts, drafted, _ = found.run(bench_billing.DRAFTS)
    finals, _, finalized = found.run(bench_billing.FINALS)
    return Row(
        figure=CLOSE_FIGURE,
        meterproxy=f"drafts {drafts:.1f}, finals {finals:.1f}",
        result=f"{drafted:,} drafts, then {finalized:,} final statements (bench_billing's store)",
        target=CLOSE_TARGET,
        verdict=verdict(max(drafts, finals) < 10),
    )
