"""The benchmark's servers for real: bench/fleet.py starts the upstream, the bare proxy,
nginx (when installed) and meterproxy as processes; every target must carry the same
requests and bodies, meterproxy must store their events, and all must stop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bench import billing_slot, ingest, memory
from bench.fleet import ADMIN_TOKEN, Fleet, start_fleet
from bench.nginx import nginx_binary
from bench.processes import Processes
from bench.report import NOT_MEASURED
from bench.upstream import SMALL_BODY

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    processes = Processes(tmp_path)
    try:
        yield await start_fleet(processes, tmp_path)
    finally:
        processes.stop_all()


async def test_every_target_answers_the_upstreams_body(fleet: Fleet) -> None:
    expected = ["direct", "bare", "meterproxy"]
    if nginx_binary() is not None:
        expected.insert(2, "nginx")
    assert [t.name for t in fleet.targets] == expected
    async with aiohttp.ClientSession(headers={"X-Customer-Id": "cus_fleet"}) as session:
        for target in fleet.targets:
            async with session.get(target.url + "/v1/items") as response:
                assert (target.name, response.status) == (target.name, 200)
                assert await response.read() == SMALL_BODY


async def test_bodies_stream_whole_both_ways_through_every_target(fleet: Fleet) -> None:
    for target in fleet.targets:
        streamed = await memory.stream_both_ways(target, 3_000_000)
        assert streamed.peak_rss > 0


async def test_meterproxy_stores_the_events_of_the_reference_rules(fleet: Fleet) -> None:
    proxy = fleet.target("meterproxy")
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/v1/items", headers={"X-Customer-Id": "cus_x"}):
            pass
        names = await _event_names(session, fleet.admin_url, "cus_x", expected=2)
    assert sorted(names) == ["api.call", "bandwidth"]


async def _event_names(
    session: aiohttp.ClientSession, admin_url: str, customer: str, expected: int
) -> list[str]:
    """The customer's event names once `expected` are stored (polled: writes are batched)."""
    for _ in range(100):
        url = f"{admin_url}/events?customer_id={customer}"
        async with session.get(url, headers=ADMIN) as response:
            items = (await response.json())["items"]
        if len(items) >= expected:
            break
        await asyncio.sleep(0.05)
    return [item["event_name"] for item in items]


async def test_ingest_counts_new_events_once(fleet: Fleet) -> None:
    bodies = ingest.batch_bodies(2)
    first = await ingest.ingest(fleet.admin_url, ADMIN_TOKEN, bodies)
    again = await ingest.ingest(fleet.admin_url, ADMIN_TOKEN, bodies)
    assert (first.sent, first.stored) == (2 * ingest.BATCH, 2 * ingest.BATCH)
    assert (again.sent, again.stored) == (2 * ingest.BATCH, 0)


async def test_billing_preview_is_timed_and_the_close_never_faked(fleet: Fleet) -> None:
    async with aiohttp.ClientSession(headers={"X-Customer-Id": "cus_bill"}) as session:
        async with session.get(fleet.target("meterproxy").url + "/v1/items"):
            pass
        await _event_names(session, fleet.admin_url, "cus_bill", expected=2)
    preview, close = await billing_slot.rows(fleet.admin_url, ADMIN_TOKEN, ["cus_bill"] * 3, 2)
    assert preview.meterproxy.startswith("p50 ") and preview.result == "3 customers"
    assert close.meterproxy == NOT_MEASURED


async def test_a_preview_that_fails_is_an_error(fleet: Fleet) -> None:
    with pytest.raises(RuntimeError, match="usage preview of cus_nobody: 404"):
        await billing_slot.rows(fleet.admin_url, ADMIN_TOKEN, ["cus_nobody"], 0)


def test_customer_samples_are_benchmark_ids_and_repeatable() -> None:
    sample = billing_slot.sample_customers(50)
    assert sample == billing_slot.sample_customers(50)
    assert all(c.startswith("cus_") and 0 <= int(c[4:]) < 10_000 for c in sample)


async def test_stop_all_ends_every_process(tmp_path: Path) -> None:
    processes = Processes(tmp_path)
    started = await start_fleet(processes, tmp_path)
    processes.stop_all()
    assert [t.name for t in started.targets if _alive(t.pid)] == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
