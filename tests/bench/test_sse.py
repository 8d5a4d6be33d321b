"""bench/sse.py with bench/upstream.py: stamped events, parsed back into delays."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench.fleet import Target
from bench.report import verdict
from bench.sse import event_delays_us, first_event_row, sample
from bench.upstream import handle, sse_event

RawServerFactory = Callable[..., Awaitable[Any]]


def test_delays_are_arrival_minus_stamp_for_stamped_data_lines() -> None:
    lines = [
        (sse_event(1_000_000, last=False), 1_250_000),
        (b"\n", 1_260_000),
        (sse_event(2_000_000, last=True), 2_900_000),
        (b"data: [DONE]\n", 3_000_000),
        (b': comment with "t":5\n', 3_000_000),
    ]
    assert event_delays_us(lines) == [250.0, 900.0]


def test_only_the_last_event_carries_usage() -> None:
    assert b'"usage":null' in sse_event(1, last=False)
    assert b'"completion_tokens":1000' in sse_event(1, last=True)


@pytest.mark.parametrize("events", [1, 25])
async def test_a_stream_arrives_whole_with_plausible_timings(
    events: int, aiohttp_raw_server: RawServerFactory
) -> None:
    server = await aiohttp_raw_server(handle)
    target = Target("direct", str(server.make_url("")).rstrip("/"), os.getpid())
    began = time.monotonic_ns()
    async with aiohttp.ClientSession() as session:
        found = await sample(session, target, events, 100)
    elapsed_us = (time.monotonic_ns() - began) / 1000
    assert 0 < found.first_event_us <= elapsed_us
    assert 0 <= found.delay_p50_us <= found.delay_p99_us <= elapsed_us


async def test_a_stream_cut_short_is_an_error(aiohttp_raw_server: RawServerFactory) -> None:
    async def two_events(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=sse_event(1, False) + sse_event(2, True))

    server = await aiohttp_raw_server(two_events)
    target = Target("direct", str(server.make_url("")).rstrip("/"), os.getpid())
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RuntimeError, match="2 of 3 events"):
            await sample(session, target, 3, 0)


def test_time_to_first_event_is_judged_against_the_upstreams_own() -> None:
    found = {
        "direct": [1000.0, 1100.0, 900.0],
        "bare": [1800.0, 1900.0, 1700.0],
        "nginx": [1100.0, 1200.0, 1000.0],
        "meterproxy": [2050.0, 2000.0, 1950.0],
    }
    row = first_event_row(found)
    assert row.result.startswith("+1,050 (+900 to +1,050) us over direct;")
    assert "+250 (+100 to +250) us over bare" in row.result
    assert row.verdict == verdict(False)
    found["meterproxy"] = [1900.0, 2000.0, 1800.0]  # +900 over direct at the median
    assert first_event_row(found).verdict == verdict(True)
