"""Folding open-period usage into bounded series: top customers, `__other__`, statements."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from billing.events import UsageEvent, now_ms
from billing.statement import StatementStatus
from proxy.app import MeterProxy
from proxy.config import load_config
from proxy.metrics import OTHER
from proxy.usage_metrics import fold_customers, statement_totals, take_snapshot
from tests.conftest import Running, StartProxy, write_config
from tests.proxy.scrape import Scrape, ingest, scrape
from tests.proxy.upstream import Upstream

D = Decimal


@pytest.mark.parametrize(
    ("quantities", "cap", "expected"),
    [
        ({}, 3, []),
        ({"a": D(1)}, 1, [("a", D(1))]),
        ({"a": D(1), "b": D(5), "c": D(3)}, 3, [("b", D(5)), ("c", D(3)), ("a", D(1))]),
        ({"a": D(1), "b": D(5), "c": D(3)}, 2, [("b", D(5)), ("c", D(3)), (OTHER, D(1))]),
        ({"a": D(1), "b": D(5), "c": D(3)}, 1, [("b", D(5)), (OTHER, D(4))]),
        # ties go to the smaller id, so the series do not flap between scrapes
        ({"z": D(2), "y": D(2), "x": D(2)}, 2, [("x", D(2)), ("y", D(2)), (OTHER, D(2))]),
        # exact decimals, negative quantities (a sum meter may go below zero)
        ({"a": D("0.1"), "b": D("0.2"), "c": D("-0.3")}, 1, [("b", D("0.2")), (OTHER, D("-0.2"))]),
        # a customer named __other__ is always folded, never shown as one customer
        ({OTHER: D(9), "a": D(1)}, 5, [("a", D(1)), (OTHER, D(9))]),
    ],
)
def test_fold_customers(
    quantities: dict[str, Decimal], cap: int, expected: list[tuple[str, Decimal]]
) -> None:
    assert fold_customers(quantities, cap) == expected


customer_ids = st.text("abcdefghij_", min_size=1, max_size=4)
amounts = st.decimals(min_value=-1000, max_value=10**6, places=3, allow_nan=False)


@settings(deadline=None)
@given(st.dictionaries(customer_ids, amounts, max_size=40), st.integers(1, 10))
def test_folding_keeps_the_total_and_the_largest(quantities: dict[str, Decimal], cap: int) -> None:
    folded = fold_customers(quantities, cap)
    assert sum((q for _, q in folded), D(0)) == sum(quantities.values(), D(0))
    shown = [(c, q) for c, q in folded if c != OTHER]
    assert len(shown) == min(cap, len(quantities))
    assert [q for _, q in shown] == sorted((q for _, q in shown), reverse=True)
    hidden = set(quantities) - {c for c, _ in shown}
    assert all(quantities[h] <= q for h in hidden for _, q in shown)
    assert (OTHER in dict(folded)) == bool(hidden)
    assert len(folded) <= cap + 1


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({}, (("draft", 0), ("final", 0))),
        ({"draft": 3}, (("draft", 3), ("final", 0))),
        ({"draft": 2, "final": 5}, (("draft", 7), ("final", 5))),
    ],
)
def test_statement_totals_count_every_statement_as_drafted(
    counts: dict[StatementStatus, int], expected: tuple[tuple[str, int], ...]
) -> None:
    assert statement_totals(counts) == expected


def test_snapshot_has_a_total_for_every_meter_and_customers_only_when_asked() -> None:
    usage = {"calls": {"a": D(2), "b": D(3), "c": D(1)}, "unknown_meter": {"a": D(7)}}
    without = take_snapshot(["calls", "bytes"], usage, {}, max_customers=None)
    assert without.totals == (("calls", D(6)), ("bytes", D(0)))
    assert without.customers == ()
    folded = take_snapshot(["calls", "bytes"], usage, {}, max_customers=1)
    assert folded.totals == without.totals
    assert folded.customers == (("calls", "b", D(3)), ("calls", OTHER, D(3)))


# ------------------------------------------- through a running meterproxy and its store

T0 = 1_800_000_000_000  # a multiple of the test plan's 30s cycle
PERIOD_MS = 30_000
CUSTOMER_LABELS = "metrics:\n  customer_labels: true\n  max_customers: 2\n"


class Clock:
    """A wall clock (ms) the test moves."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
async def upstream(aiohttp_server: Any) -> TestServer:
    return await aiohttp_server(Upstream().app())


def config_file(tmp_path: Path, upstream: TestServer, metrics: str = "") -> Path:
    path = write_config(tmp_path, f"http://127.0.0.1:{upstream.port}")
    path.write_text(path.read_text().replace("storage:\n", metrics + "storage:\n", 1))
    return path


@contextlib.asynccontextmanager
async def meterproxy(path: Path, clock: Clock) -> AsyncIterator[Running]:
    """A MeterProxy on `path` whose clock the test moves."""
    mp = MeterProxy(load_config(path), registry=CollectorRegistry(), clock=clock)
    await mp.start()
    async with aiohttp.ClientSession() as session:
        try:
            yield Running(mp, session)
        finally:
            await mp.stop()


async def store(running: Running, customer: str, at_ms: int, n: int = 1) -> None:
    """n api.call events of `customer` at `at_ms`, on disk when this returns."""
    events = [
        UsageEvent(f"{customer}-{at_ms}-{i}", customer, "api.call", at_ms, {}) for i in range(n)
    ]
    await running.mp.writer.submit_durable(events)


def usage(got: Scrape, meter: str, **labels: str) -> float | None:
    return got.value("meterproxy_meter_usage", meter=meter, **labels)


def customer_series(got: Scrape, meter: str) -> dict[str, float]:
    return {
        s.labels["customer"]: s.value
        for s in got.samples("meterproxy_meter_usage")
        if s.labels.get("meter") == meter and "customer" in s.labels
    }


async def test_usage_of_every_meter_from_proxy_and_ingested_events(
    upstream: TestServer, start_proxy: StartProxy
) -> None:
    running = await start_proxy(f"http://127.0.0.1:{upstream.port}")
    for customer in ("acme", "acme", "globex"):
        async with running.session.get(
            running.proxy_url + "/v1/bytes/100", headers={"X-Customer-Id": customer}
        ) as r:
            assert len(await r.read()) == 100
    await ingest(running, {"event_id": "i1", "customer_id": "initech", "event_name": "api.call"})
    await running.flush()
    got = await scrape(running)
    assert usage(got, "api_calls") == 4
    assert usage(got, "egress_bytes") == 300
    assert customer_series(got, "api_calls") == {}  # customer_labels is off by default


async def test_per_customer_series_are_capped_with_the_rest_in_other(
    upstream: TestServer, tmp_path: Path
) -> None:
    clock = Clock(T0)
    async with meterproxy(config_file(tmp_path, upstream, CUSTOMER_LABELS), clock) as running:
        for customer, n in (("a", 1), ("b", 5), ("c", 3), ("d", 2), ("e", 1)):
            await store(running, customer, T0 + 1000, n)
        got = await scrape(running)
    assert usage(got, "api_calls") == 12
    assert customer_series(got, "api_calls") == {"b": 5, "c": 3, OTHER: 4}
    assert customer_series(got, "egress_bytes") == {}  # no usage: no customer series
    assert usage(got, "egress_bytes") == 0


async def test_usage_survives_a_restart_and_drops_at_the_period_rollover(
    upstream: TestServer, tmp_path: Path
) -> None:
    clock = Clock(T0)
    path = config_file(tmp_path, upstream)
    async with meterproxy(path, clock) as running:
        await store(running, "acme", T0 + 1000, 3)
        await store(running, "globex", T0 + 2000, 2)
        assert usage(await scrape(running), "api_calls") == 5
    clock.now_ms = T0 + 10_000
    async with meterproxy(path, clock) as running:
        assert usage(await scrape(running), "api_calls") == 5  # read from the store
        clock.now_ms = T0 + PERIOD_MS + 500
        await store(running, "acme", T0 + PERIOD_MS + 100)
        assert usage(await scrape(running), "api_calls") == 1  # the new period only


async def test_usage_is_reread_at_most_once_per_second(
    upstream: TestServer, tmp_path: Path
) -> None:
    clock = Clock(T0)
    async with meterproxy(config_file(tmp_path, upstream), clock) as running:
        await store(running, "acme", T0 + 100)
        assert usage(await scrape(running), "api_calls") == 1
        await store(running, "acme", T0 + 200)
        clock.now_ms += 999
        assert usage(await scrape(running), "api_calls") == 1  # the snapshot, still fresh
        clock.now_ms += 1
        assert usage(await scrape(running), "api_calls") == 2


async def test_statements_count_created_and_finalised(upstream: TestServer, tmp_path: Path) -> None:
    clock = Clock(T0)
    async with meterproxy(config_file(tmp_path, upstream), clock) as running:
        await store(running, "acme", T0 + 100)
        got = await scrape(running)
        assert got.value("meterproxy_statements_total", status="draft") == 0
        # past two period ends and the first one's grace: drafts and a final statement
        clock.now_ms = T0 + 2 * PERIOD_MS + 3_600_000
        await running.mp.engine.close()  # the scheduler may have run already: no matter
        stored = await running.mp.engine.statement_counts()
        got = await scrape(running)
    assert stored["final"] > 0
    created = got.value("meterproxy_statements_total", status="draft")
    assert created == stored["draft"] + stored["final"]
    assert got.value("meterproxy_statements_total", status="final") == stored["final"]


MONTH = 2_678_400_000  # 31 days: from any instant, past the next month boundary


async def shows_the_store(running: Running, cap: int) -> None:
    """The scrape shows what folding a whole read of the store gives, totals and customers."""
    got = await scrape(running)
    mp = running.mp
    whole = await mp.engine.open_usage(mp.clock())
    expected = take_snapshot([m.name for m in mp.config.meters], whole, {}, cap)
    assert {m: usage(got, m) for m, _ in expected.totals} == {
        m: float(q) for m, q in expected.totals
    }
    for meter, _ in expected.totals:
        assert customer_series(got, meter) == {
            c: float(q) for m, c, q in expected.customers if m == meter
        }


async def test_every_scrape_shows_a_whole_read_through_traffic_rollover_and_restart(
    upstream: TestServer, tmp_path: Path
) -> None:
    """Proxied and ingested events reach /metrics through the open-usage table, which then
    agrees with a whole read of the store; also for customers it had never seen, after the
    period rolled over and after a restart."""
    path = config_file(tmp_path, upstream, CUSTOMER_LABELS)
    path.write_text(path.read_text().replace("cycle: 30s", "cycle: monthly"))
    clock = Clock(now_ms())  # proxy events carry the wall time: keep the clock near it

    async def traffic(running: Running, calls: dict[str, int], ingested: str) -> None:
        for customer, n in calls.items():
            for _ in range(n):
                async with running.session.get(
                    running.proxy_url + "/v1/bytes/100", headers={"X-Customer-Id": customer}
                ) as r:
                    await r.read()
        await ingest(running, {"event_id": f"{ingested}-{clock.now_ms}", "event_name": "api.call",
                               "customer_id": ingested})
        await running.flush()
        clock.now_ms += 1001  # past the snapshot's second

    async with meterproxy(path, clock) as running:
        await shows_the_store(running, 2)
        await traffic(running, {"acme": 3, "globex": 1}, "initech")
        await shows_the_store(running, 2)
        await traffic(running, {"acme": 1, "hooli": 4, "umbrella": 2}, "globex")
        await shows_the_store(running, 2)
        assert usage(await scrape(running), "api_calls") == 13
    async with meterproxy(path, clock) as running:
        await shows_the_store(running, 2)
        clock.now_ms += MONTH
        await store(running, "acme", clock.now_ms - 1, 2)
        await shows_the_store(running, 2)
        assert usage(await scrape(running), "api_calls") == 2
