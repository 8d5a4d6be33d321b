"""bench/think_time.py: its report, and one short sample against a real upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.think_time import Latency, one_client, report


def test_report_adds_over_bare_round_by_round() -> None:
    found = {
        0.0: {"bare": [Latency(100, 200), Latency(110, 220)],
              "no rules": [Latency(130, 260), Latency(150, 250)]},
        300.0: {"bare": [Latency(100, 200)], "no rules": [Latency(120, 210)]},
    }
    rows = [line for line in report(found, 2000).splitlines() if line.startswith("| ")][2:]
    assert rows == [
        "| 0 us | bare | 105 (100 to 110) | 210 (200 to 220) | - | - |",
        # per round: 130 - 100 = 30 and 150 - 110 = 40; 260 - 200 = 60, 250 - 220 = 30
        "| 0 us | no rules | 140 (130 to 150) | 255 (250 to 260) | +35 (+30 to +40)"
        " | +45 (+30 to +60) |",
        "| 300 us | bare | 100 | 200 | - | - |",
        "| 300 us | no rules | 120 | 210 | +20 | +10 |",
    ]


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[str]]]:
    customers: list[str] = []

    async def items(request: web.Request) -> web.Response:
        customers.append(request.headers["X-Customer-Id"])
        return web.Response(body=b"[]")

    app = web.Application()
    app.router.add_get("/v1/items", items)
    async with TestServer(app) as server:
        yield str(server.make_url("/v1/items")), customers


async def test_one_client_sends_one_request_per_customer_in_turn(
    upstream: tuple[str, list[str]],
) -> None:
    url, customers = upstream
    async with aiohttp.ClientSession() as session:
        latency = await one_client(session, url, 20, think_s=0.0001)
    assert customers == [f"cus_{n:05d}" for n in range(20)]
    assert 0 < latency.p50_us <= latency.p99_us
