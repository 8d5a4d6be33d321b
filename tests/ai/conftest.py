"""Fixtures for the AI examples: an `AiUpstream` and a meterproxy running an example file.

`start_example("openai")` loads examples/ai/openai.yaml as a user would (listeners, upstream,
database and admin token come from its `${env.*}` values), starts it in front of the
upstream and issues an API key for customer `acme`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from billing.meters import quantity
from billing.pricing import price_line
from proxy.config import Config, load_config
from tests.ai.upstream import AiUpstream
from tests.conftest import ADMIN_TOKEN, AUTH, Running, StartProxy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ai"
CUSTOMER = "acme"
FOREVER_MS = 2**53


def example_config(name: str, upstream: str, tmp_path: Path, **proxy: Any) -> Config:
    """examples/ai/NAME.yaml with test listeners and storage; `proxy` overrides settings."""
    environ = {
        "METERPROXY_LISTEN": "127.0.0.1:0",
        "METERPROXY_ADMIN_LISTEN": "127.0.0.1:0",
        "METERPROXY_UPSTREAM": upstream,
        "METERPROXY_DB": str(tmp_path / f"{name}.db"),
        "METERPROXY_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    config = load_config(EXAMPLES / f"{name}.yaml", environ=environ)
    return replace(config, proxy=replace(config.proxy, **proxy)) if proxy else config


@dataclass
class Example:
    """A running example: the proxy, its upstream and an API key of customer `acme`."""

    running: Running
    upstream: AiUpstream
    key: str

    @property
    def url(self) -> str:
        return self.running.proxy_url

    async def events(self, event_name: str) -> list[dict[str, Any]]:
        """Stored events of that name, oldest first."""
        return list(reversed(await self.running.events(event_name=event_name)))

    async def wait_for_events(self, event_name: str, count: int) -> list[dict[str, Any]]:
        """Poll until `count` events of that name are stored (the exchange has ended)."""
        while True:
            events = await self.events(event_name)
            if len(events) >= count:
                return events
            await asyncio.sleep(0.01)

    async def quantities(self) -> dict[str, Decimal]:
        """Every meter's quantity for `acme` over all time, from the store's aggregates."""
        await self.running.flush()
        store = self.running.mp.store
        out = {}
        for meter in self.running.mp.config.meters:
            aggregate = await store.meter_aggregate(meter.name, CUSTOMER, 0, FOREVER_MS)
            out[meter.name] = quantity(meter.aggregation, aggregate)
        return out

    async def amounts(self) -> dict[str, Decimal]:
        """Each price line of the config's only plan for `acme`'s usage so far."""
        [plan] = self.running.mp.config.plans
        quantities = await self.quantities()
        return {
            price.meter: price_line(price, quantities[price.meter], plan.currency)[0].amount
            for price in plan.prices
        }


StartExample = Callable[..., Awaitable[Example]]


@pytest.fixture
def upstream() -> AiUpstream:
    return AiUpstream()


@pytest.fixture
async def start_example(
    start_proxy: StartProxy, aiohttp_server: Any, upstream: AiUpstream, tmp_path: Path
) -> StartExample:
    server = await aiohttp_server(upstream.app())
    base = f"http://127.0.0.1:{server.port}"

    async def start(name: str, **proxy: Any) -> Example:
        running = await start_proxy(base, config=example_config(name, base, tmp_path, **proxy))
        return Example(running, upstream, await issue_key(running, CUSTOMER))

    return start


async def issue_key(running: Running, customer: str) -> str:
    url = f"{running.admin_url}/v1/customers/{customer}/keys"
    async with running.session.post(url, headers=AUTH) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["key"])


async def until(condition: Callable[[], bool]) -> None:
    """Poll until `condition()` holds: for states nothing signals (pytest-timeout bounds it)."""
    while True:
        if condition():
            return
        await asyncio.sleep(0.005)
