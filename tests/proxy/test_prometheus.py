"""Prometheus's own tools against meterproxy: promtool on a scrape and on the examples, and
a real Prometheus server scraping a running meterproxy.

The binaries come from Debian's `prometheus` package, which `.ci/run` installs; the tests
skip without them only outside CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from billing.events import format_timestamp, now_ms
from proxy.config import Config, load_config
from tests.conftest import Running, StartProxy, write_config
from tests.proxy.scrape import ingest, scrape
from tests.proxy.upstream import Upstream

EXAMPLES = Path(__file__).parents[2] / "examples"
ALERTS = EXAMPLES / "prometheus" / "alerts.yml"
DASHBOARD = EXAMPLES / "grafana" / "meterproxy.json"
CUSTOMER = {"X-Customer-Id": "acme"}
CUSTOMER_LABELS = "metrics:\n  customer_labels: true\n  max_customers: 2\n"
METRIC_NAME = re.compile(r"\b(meterproxy_[a-z_]+|up)\b")
PROMETHEUS_WAIT_S = 60.0


def tool(name: str) -> str:
    """The path of a Prometheus binary; skip (fail under CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing under CI: .ci/run installs Debian's prometheus")
        pytest.skip(f"{name} is not installed (apt-get install prometheus); CI runs this test")
    return path


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, TestServer]:
    up = Upstream()
    return up, await aiohttp_server(up.app())


def url_of(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def monthly_config(tmp_path: Path, upstream_url: str, metrics: str = "") -> Config:
    """The test config (tests/conftest.py) billed monthly, so that no period rolls over
    while a test waits (its 30s cycle would), with a `metrics:` section if given."""
    path = write_config(tmp_path, upstream_url, proxy_extra="server_timing: true")
    text = path.read_text().replace("cycle: 30s", "cycle: monthly", 1)
    path.write_text(text.replace("storage:\n", metrics + "storage:\n", 1))
    return load_config(path)


async def mixed_traffic(running: Running) -> None:
    """Successes, upstream errors, unidentified and bad-key requests, ingest outcomes."""
    session = running.session
    for customer in ("acme", "globex", "initech", "acme"):
        async with session.get(
            running.proxy_url + "/v1/echo", headers={"X-Customer-Id": customer}
        ) as r:
            assert r.status == 200
    for path, headers in (
        ("/v1/status/503", CUSTOMER),
        ("/v1/cut", CUSTOMER),
        ("/v1/echo", {}),
        ("/v1/echo", {"Authorization": "Bearer not-a-key"}),
    ):
        with contextlib.suppress(aiohttp.ClientPayloadError):
            async with session.get(running.proxy_url + path, headers=headers) as r:
                await r.read()
    event = {"event_id": "i1", "customer_id": "hooli", "event_name": "api.call"}
    await ingest(running, event, {**event, "event_id": "i2", "event_name": "bandwidth"})
    await ingest(running, event)
    await running.flush()


# ---------------------------------------------------------------------- promtool


async def test_promtool_finds_nothing_in_a_scrape_after_mixed_traffic(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy, tmp_path: Path
) -> None:
    config = monthly_config(tmp_path, url_of(upstream[1]), CUSTOMER_LABELS)
    running = await start_proxy("", config=config)
    await mixed_traffic(running)
    got = await scrape(running)
    assert got.samples("meterproxy_meter_usage")  # the scrape holds the usage collector's
    checked = promtool("check", "metrics", stdin=got.text)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


def test_promtool_accepts_the_example_config_and_rules() -> None:
    for args in (
        ("check", "config", str(EXAMPLES / "prometheus" / "prometheus.yml")),
        ("check", "rules", str(ALERTS)),
        ("test", "rules", str(EXAMPLES / "prometheus" / "alerts_test.yml")),
    ):
        done = promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------- examples query real metrics


def alert_expressions() -> Iterator[str]:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]


def dashboard_expressions() -> Iterator[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        yield variable["query"]["query"]


def test_the_dashboard_has_the_panels_operators_need() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dashboard["panels"] if p["type"] != "row"}
    for needed in (
        "Usage per meter",
        "Top customers",
        "Request rate by status class",
        "Proxy overhead percentiles",
        "Store backlog",
    ):
        assert needed in titles
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


async def test_every_metric_the_examples_query_is_exposed(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy, tmp_path: Path
) -> None:
    config = monthly_config(tmp_path, url_of(upstream[1]), CUSTOMER_LABELS)
    running = await start_proxy("", config=config)
    await mixed_traffic(running)
    exposed = {s.name for f in (await scrape(running)).families.values() for s in f.samples}
    queried = {
        name
        for expr in (*alert_expressions(), *dashboard_expressions())
        for name in METRIC_NAME.findall(expr)
    }
    assert queried - {"up"} - exposed == set()
    assert "meterproxy_meter_usage" in queried


# ------------------------------------------------------------ a real Prometheus


@contextlib.asynccontextmanager
async def prometheus(tmp_path: Path, target: str, port: int) -> AsyncIterator[str]:
    """A Prometheus server scraping `target` every second; yields its base URL."""
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "meterproxy", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    log = (tmp_path / "prometheus.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        tool("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.close()


async def query_until(base: str, promql: str, expected: dict[str, str]) -> dict[str, str]:
    """Poll the HTTP API until `promql` returns `expected` (labels -> value); the last answer."""
    deadline = time.monotonic() + PROMETHEUS_WAIT_S
    answer: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline and answer != expected:
            answer = await query(session, base, promql)
            await asyncio.sleep(0.5)
    return answer


async def query(session: aiohttp.ClientSession, base: str, promql: str) -> dict[str, str]:
    """An instant query's result as labels (JSON) -> value; empty while Prometheus starts."""
    with contextlib.suppress(aiohttp.ClientError):
        async with session.get(f"{base}/api/v1/query", params={"query": promql}) as r:
            if r.status == 200:
                body = await r.json()
                return {
                    json.dumps(s["metric"], sort_keys=True): s["value"][1]
                    for s in body["data"]["result"]
                }
    return {}


def series(**labels: str) -> str:
    return json.dumps(labels, sort_keys=True)


async def test_a_real_prometheus_scrapes_the_meter_values(
    upstream: tuple[Upstream, TestServer],
    start_proxy: StartProxy,
    tmp_path: Path,
    unused_tcp_port: int,
) -> None:
    running = await start_proxy("", config=monthly_config(tmp_path, url_of(upstream[1])))
    for _ in range(3):
        async with running.session.get(running.proxy_url + "/v1/echo", headers=CUSTOMER) as r:
            assert r.status == 200
    stamp = format_timestamp(now_ms())
    await ingest(
        running,
        *(
            {"event_id": f"p{i}", "customer_id": "globex", "event_name": "api.call",
             "timestamp": stamp}
            for i in range(2)
        ),
    )  # fmt: skip
    await running.flush()
    job = {"instance": f"127.0.0.1:{running.mp.port('admin')}", "job": "meterproxy"}
    target = job["instance"]
    async with prometheus(tmp_path, target, unused_tcp_port) as base:
        got = await query_until(
            base,
            'meterproxy_meter_usage{meter="api_calls"}',
            {series(__name__="meterproxy_meter_usage", meter="api_calls", **job): "5"},
        )
        assert got == {series(__name__="meterproxy_meter_usage", meter="api_calls", **job): "5"}
        up = await query_until(base, "up", {series(__name__="up", **job): "1"})
        assert up == {series(__name__="up", **job): "1"}
