"""Metrics pushed by the proxy, read back from a real /metrics scrape after real traffic."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.metrics import PROXY_ERRORS, RULE_ERROR_REASONS, STATUS_CLASSES, status_class
from proxy.version import __version__
from tests.conftest import StartProxy
from tests.proxy.scrape import ingest, scrape
from tests.proxy.upstream import Upstream

CUSTOMER = {"X-Customer-Id": "acme"}
SLOW_S = 0.3

# family (as parsed; counters without _total), type, label names: the contract's list.
CONTRACT = [
    ("meterproxy_requests", "counter", {"rule", "status_class"}),
    ("meterproxy_request_duration_seconds", "histogram", set()),
    ("meterproxy_overhead_seconds", "histogram", set()),
    ("meterproxy_events", "counter", {"event_name", "source", "outcome"}),
    ("meterproxy_store_pending_events", "gauge", set()),
    ("meterproxy_store_flush_seconds", "histogram", set()),
    ("meterproxy_store_flush_errors", "counter", set()),
    ("meterproxy_meter_skipped_events", "counter", {"meter", "reason"}),
    ("meterproxy_rule_errors", "counter", {"rule", "reason"}),
    ("meterproxy_unidentified_requests", "counter", set()),
    ("meterproxy_build_info", "gauge", {"version"}),
    ("meterproxy_proxy_errors", "counter", {"reason"}),
]


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, TestServer]:
    up = Upstream()
    return up, await aiohttp_server(up.app())


def url_of(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize(
    ("status", "expected"),
    [(None, "none"), (99, "none"), (100, "1xx"), (101, "1xx"), (204, "2xx"), (302, "3xx"),
     (404, "4xx"), (503, "5xx"), (599, "5xx"), (600, "none")],
)  # fmt: skip
def test_status_class(status: int | None, expected: str) -> None:
    assert status_class(status) == expected


@pytest.mark.parametrize(("family", "kind", "labels"), CONTRACT)
async def test_every_contract_metric_is_exposed_with_help(
    upstream: tuple[Upstream, TestServer],
    start_proxy: StartProxy,
    family: str,
    kind: str,
    labels: set[str],
) -> None:
    running = await start_proxy(url_of(upstream[1]))
    found = (await scrape(running)).families[family]
    assert found.type == kind
    assert found.documentation
    for sample in found.samples:
        assert set(sample.labels) - {"le"} == labels


async def test_the_collectors_work_is_exposed_per_generation(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    running = await start_proxy(url_of(upstream[1]))
    got = await scrape(running)
    for generation in ("0", "1", "2"):  # what proxy.gc changes (proxy/gc_schedule.py)
        collections = got.value("python_gc_collections_total", generation=generation)
        assert collections is not None and collections >= 0


async def test_children_of_closed_label_sets_exist_before_any_traffic(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    running = await start_proxy(url_of(upstream[1]))
    got = await scrape(running)
    for rule in ("api-calls", "egress", "__none__"):
        for cls in STATUS_CLASSES:
            assert got.value("meterproxy_requests_total", rule=rule, status_class=cls) == 0
        for reason in RULE_ERROR_REASONS:
            assert got.value("meterproxy_rule_errors_total", rule=rule, reason=reason) == 0
    for reason in PROXY_ERRORS:
        assert got.value("meterproxy_proxy_errors_total", reason=reason) == 0
    for outcome in ("stored", "duplicate", "rejected", "dropped"):
        labels = {"event_name": "__other__", "source": "api", "outcome": outcome}
        assert got.value("meterproxy_events_total", **labels) == 0
    assert got.value("meterproxy_build_info", version=__version__) == 1


async def test_requests_count_once_per_matching_rule_by_status_class(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    running = await start_proxy(url_of(upstream[1]))
    for path in ("/v1/echo", "/v1/echo", "/v1/status/503", "/echo"):
        async with running.session.get(running.proxy_url + path, headers=CUSTOMER) as r:
            await r.read()
    async with running.session.get(running.proxy_url + "/v1/echo") as r:
        assert r.status == 401  # unidentified: meterproxy's own answer, no rule
    got = await scrape(running)
    counts = {
        (s.labels["rule"], s.labels["status_class"]): s.value
        for s in got.samples("meterproxy_requests_total")
        if s.value
    }
    assert counts == {
        ("api-calls", "2xx"): 2,  # api-calls matches 2xx only
        ("egress", "2xx"): 3,
        ("egress", "5xx"): 1,
        ("__none__", "none"): 1,
    }
    assert got.value("meterproxy_unidentified_requests_total") == 1
    assert got.value("meterproxy_proxy_errors_total", reason="unidentified") == 1
    assert got.value("meterproxy_request_duration_seconds_count") == 5


async def test_overhead_excludes_the_time_spent_waiting_on_the_upstream(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    running = await start_proxy(url_of(upstream[1]))
    for _ in range(2):
        async with running.session.get(
            running.proxy_url + f"/v1/slow?s={SLOW_S}", headers=CUSTOMER
        ) as r:
            assert await r.text() == "late"
    got = await scrape(running)
    total = got.value("meterproxy_request_duration_seconds_sum")
    overhead = got.value("meterproxy_overhead_seconds_sum")
    assert got.value("meterproxy_overhead_seconds_count") == 2
    assert total is not None and overhead is not None
    assert total >= 2 * SLOW_S
    assert 0 <= overhead <= total - 2 * SLOW_S


@pytest.mark.parametrize("enabled", [True, False])
async def test_server_timing_header_only_when_enabled(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy, enabled: bool
) -> None:
    extra = f"server_timing: {str(enabled).lower()}"
    running = await start_proxy(url_of(upstream[1]), proxy_extra=extra)
    async with running.session.get(
        running.proxy_url + f"/v1/slow?s={SLOW_S}", headers=CUSTOMER
    ) as r:
        values = r.headers.getall("Server-Timing", [])
    if not enabled:
        assert values == []
        return
    [value] = values
    name, _, dur = value.partition(";dur=")
    assert name == "meterproxy"
    # our own time until the headers: the upstream's sleep is not in it
    assert 0 <= float(dur) < SLOW_S * 1000


async def test_events_by_source_and_outcome(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    running = await start_proxy(url_of(upstream[1]))
    async with running.session.get(running.proxy_url + "/v1/echo", headers=CUSTOMER) as r:
        assert r.status == 200
    event = {"event_id": "e1", "customer_id": "acme", "event_name": "api.call"}
    assert await ingest(running, event, {**event, "event_id": "e2", "event_name": "x.y"}) == 2
    assert await ingest(running, event) == 0
    await running.flush()
    got = await scrape(running)

    def events(name: str, source: str, outcome: str) -> float | None:
        labels = {"event_name": name, "source": source, "outcome": outcome}
        return got.value("meterproxy_events_total", **labels)

    assert events("api.call", "proxy", "stored") == 1
    assert events("bandwidth", "proxy", "stored") == 1
    assert events("api.call", "api", "stored") == 1
    assert events("api.call", "api", "duplicate") == 1
    assert events("__other__", "api", "stored") == 1  # x.y: no rule or meter uses it
    assert got.value("meterproxy_store_pending_events") == 0
    flushes = got.value("meterproxy_store_flush_seconds_count")
    assert flushes is not None and flushes >= 1
    assert got.value("meterproxy_store_flush_errors_total") == 0


async def test_skipped_events_by_meter_and_reason(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    running = await start_proxy(url_of(upstream[1]))
    base = {"customer_id": "acme", "event_name": "bandwidth"}
    await ingest(
        running,
        {**base, "event_id": "b1", "metadata": {"bytes": 10}},
        {**base, "event_id": "b2", "metadata": {}},
        {**base, "event_id": "b3", "metadata": {"bytes": "ten"}},
        {**base, "event_id": "b4", "metadata": {"bytes": "x"}},
    )
    got = await scrape(running)
    skipped = "meterproxy_meter_skipped_events_total"
    assert got.value(skipped, meter="egress_bytes", reason="missing") == 1
    assert got.value(skipped, meter="egress_bytes", reason="not_numeric") == 2
    assert got.value(skipped, meter="api_calls", reason="missing") == 0
