"""Black box: `meterproxy run` with a 2 s cycle bills real traffic. The test sends requests
through the proxy and events through the ingest API, waits (on the real clock: this is the
one billing test that does) until the periods holding them are final, and reads the final
statements from the admin API: their quantities and amounts are what the client saw."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from billing.events import parse_timestamp
from tests.conftest import AUTH, write_config
from tests.proxy.test_cli import Server, run_cli
from tests.proxy.upstream import Upstream

CALL_PRICE = Decimal("0.01")
BYTE_PRICE = Decimal("0.0001")


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, TestServer]:
    up = Upstream()
    return up, await aiohttp_server(up.app())


def billing_config(tmp_path: Path, upstream_url: str) -> Path:
    path = write_config(tmp_path, upstream_url)
    text = path.read_text()
    for old, new in (
        ("cycle: 30s", "cycle: 2s"),
        ('      - {meter: api_calls, price_per_unit: "0.01"}',
         f'      - {{meter: api_calls, price_per_unit: "{CALL_PRICE}"}}\n'
         f'      - {{meter: egress_bytes, price_per_unit: "{BYTE_PRICE}"}}'),
        ("  default_plan: basic",
         "  default_plan: basic\n  grace_period: 1s\n  ingest_window: {past: 1s, future: 1m}"),
    ):
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)
    return path


async def send_traffic(session: aiohttp.ClientSession, child: Server) -> tuple[int, int, int]:
    """Proxied calls and ingested events for customer bb; (calls, events, body bytes seen)."""
    headers = {"X-Customer-Id": "bb"}
    calls = seen = 0
    for i in range(12):
        async with session.get(f"{child.url('proxy')}/v1/echo?i={i}", headers=headers) as r:
            assert r.status == 200
            seen += len(await r.read())
            calls += 1
        if i % 4 == 0:
            await asyncio.sleep(0.5)  # spread the traffic over several periods
    events = [{"event_id": str(uuid.uuid4()), "customer_id": "bb", "event_name": "api.call"}
              for _ in range(5)]
    async with session.post(f"{child.url('admin')}/events/ingest", json={"events": events},
                            headers=AUTH) as r:
        assert r.status == 200 and await r.json() == {"ingested_count": 5}
    return calls, len(events), seen


async def final_statements(session: aiohttp.ClientSession, child: Server,
                           until_ms: int) -> list[dict[str, Any]]:
    """bb's final statements, once the one whose period holds `until_ms` is final."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with session.get(f"{child.url('admin')}/v1/statements", headers=AUTH,
                               params={"customer_id": "bb", "status": "final",
                                       "page_size": "100"}) as r:
            items: list[dict[str, Any]] = (await r.json())["items"]
        if any(parse_timestamp(s["period_end"]) > until_ms for s in items):
            return items
        await asyncio.sleep(0.2)  # the scheduler finalises on its own clock
    raise AssertionError("no final statement covers the traffic")


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def usage(statement: dict[str, Any], meter: str) -> tuple[Decimal, Decimal]:
    [line] = [line for line in statement["lines"] if line["meter"] == meter]
    return Decimal(line["quantity"]), Decimal(line["amount"])


async def test_meterproxy_run_bills_the_traffic_the_client_saw(
    upstream: tuple[Upstream, TestServer], tmp_path: Path
) -> None:
    _, server = upstream
    config = billing_config(tmp_path, f"http://127.0.0.1:{server.port}")
    child = await Server.start(config)
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            calls, events, seen = await send_traffic(session, child)
            statements = await final_statements(session, child, int(time.time() * 1000))
    finally:
        assert await child.stop() == 0
    periods = sorted((s["period_start"], s["period_end"]) for s in statements)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(periods))  # never overlapping
    assert len({s["id"] for s in statements}) == len(statements)
    total_calls = total_bytes = Decimal(0)
    for statement in statements:
        quantity, amount = usage(statement, "api_calls")
        assert amount == cents(quantity * CALL_PRICE)
        total_calls += quantity
        egress, egress_amount = usage(statement, "egress_bytes")
        assert egress_amount == cents(egress * BYTE_PRICE)
        total_bytes += egress
    assert (total_calls, total_bytes) == (Decimal(calls + events), Decimal(seen))
    code, out, _ = await run_cli("verify", "-c", str(config))
    assert code == 0, out
    assert re.fullmatch(r"(\d+) final statements verified, 0 differ\n", out), out
