"""Shared fixtures: a real upstream (aiohttp_server) behind a real meterproxy.

`start_proxy(upstream_url, yaml_extra)` writes a config file in tmp_path (listeners on
port 0, a fresh SQLite file), starts `MeterProxy` and returns a `Running` handle with
the proxy and admin base URLs; every proxy started is stopped at teardown.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from proxy.app import MeterProxy
from proxy.config import Config, load_config

ADMIN_TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

BASE_YAML = """\
proxy:
  listen: 127.0.0.1:0
  upstream: {upstream}
{proxy_extra}
admin:
  listen: 127.0.0.1:0
  token: {token}
storage:
  path: {db}
  flush_interval: 10ms
customers:
  identify:
    - api_key: {{header: Authorization, scheme: Bearer}}
    - ${{request.header.x-customer-id}}
  unidentified: {unidentified}
{rules}
meters:
  - name: api_calls
    event_name: api.call
    aggregation: {{type: count}}
  - name: egress_bytes
    event_name: bandwidth
    aggregation: {{type: sum, key: bytes}}
plans:
  - name: basic
    currency: USD
    cycle: 30s
    prices:
      - {{meter: api_calls, price_per_unit: "0.01"}}
billing:
  default_plan: basic
"""

DEFAULT_RULES = """\
rules:
  - name: api-calls
    match: {path: /v1/**}
    event_name: api.call
    metadata:
      method: ${request.method}
      endpoint: ${request.path}
      status: ${response.status}
  - name: egress
    match: {path: /**, status: any}
    event_name: bandwidth
    metadata:
      bytes: ${response.bytes}
      request_bytes: ${request.bytes}
      aborted: ${exchange.aborted}
"""


def write_config(
    tmp_path: Path,
    upstream: str,
    *,
    rules: str = DEFAULT_RULES,
    proxy_extra: str = "",
    unidentified: str = "reject",
    name: str = "meterproxy.yaml",
) -> Path:
    text = BASE_YAML.format(
        upstream=upstream,
        proxy_extra=textwrap.indent(textwrap.dedent(proxy_extra), "  "),
        token=ADMIN_TOKEN,
        db=tmp_path / "meterproxy.db",
        unidentified=unidentified,
        rules=rules,
    )
    path = tmp_path / name
    path.write_text(text)
    return path


@dataclass
class Running:
    mp: MeterProxy
    session: aiohttp.ClientSession

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.mp.port('proxy')}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.mp.port('admin')}"

    @property
    def registry(self) -> CollectorRegistry:
        return self.mp.registry

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def flush(self) -> None:
        """Wait until every event submitted so far is stored."""
        await self.mp.writer.submit_durable([])

    async def events(self, **params: Any) -> list[dict[str, Any]]:
        await self.flush()
        params.setdefault("page_size", 100)
        async with self.session.get(
            f"{self.admin_url}/events", params=params, headers=AUTH
        ) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        return list(body["items"])


StartProxy = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_proxy(tmp_path: Path) -> AsyncIterator[StartProxy]:
    started: list[Running] = []
    session = aiohttp.ClientSession(auto_decompress=False)

    async def start(upstream: str, config: Config | None = None, **kwargs: Any) -> Running:
        if config is None:
            config = load_config(write_config(tmp_path, upstream, **kwargs))
        mp = MeterProxy(config, registry=CollectorRegistry())
        await mp.start()
        running = Running(mp, session)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.mp.stop()
    await session.close()
