"""A meterproxy for the admin API contract tests: both tokens, a metrics-only listener, a
test clock, and an account seeded with one of everything (event, key, grant, adjustment,
final statement) so generated requests can reach the success paths."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from proxy.app import MeterProxy
from proxy.config import load_config
from tests.billing.test_engine_kit import DAY, FEB, HOUR, JAN, Clock
from tests.conftest import ADMIN_TOKEN
from tests.proxy.test_billing_api import Admin

INGEST_TOKEN = "test-ingest-token"
CUSTOMER = "acme"
SEED_EVENT = "seed-1"

CONFIG = """\
proxy: {{listen: "127.0.0.1:0", upstream: "http://127.0.0.1:{port}"}}
admin: {{listen: "127.0.0.1:0", token: {token}, ingest_token: {ingest}}}
metrics: {{listen: "127.0.0.1:0"}}
storage: {{path: {db}, flush_interval: 10ms}}
customers:
  identify:
    - api_key: {{header: Authorization, scheme: Bearer}}
rules:
  - {{name: calls, match: {{path: /v1/**}}, event_name: api.call}}
meters:
  - {{name: api_calls, event_name: api.call, aggregation: {{type: count}}, measurement_unit: calls}}
  - name: big_images
    event_name: image
    aggregation: {{type: sum, key: n}}
    filter: {{conjunction: and, clauses: [{{key: size, operator: equals, value: big}}]}}
plans:
  - name: pro
    currency: USD
    cycle: monthly
    fixed_price: "49.00"
    prices:
      - {{meter: api_calls, price_per_unit: "0.01", free_threshold: 2,
          credits: {{per_cycle: 1, rollover_percent: 50}}}}
      - {{meter: big_images, price_per_unit: "0.5", unit_size: 2}}
  - name: basic
    currency: EUR
    cycle: weekly
    prices:
      - {{meter: api_calls, price_per_unit: "0.05"}}
billing: {{default_plan: pro, grace_period: 1h, ingest_window: {{past: 40d, future: 5m}}}}
"""


@dataclass(frozen=True)
class Seeds:
    """Ids that exist in a seeded store."""

    customer: str
    event_id: str
    key_id: str
    statement_id: str


def write(tmp_path: Path, upstream_port: int, db: Path) -> Path:
    path = tmp_path / "meterproxy.yaml"
    path.write_text(CONFIG.format(port=upstream_port, token=ADMIN_TOKEN, ingest=INGEST_TOKEN,
                                  db=db))
    return path


@asynccontextmanager
async def running_admin(
    tmp_path: Path, upstream_port: int, db: Path | None = None
) -> AsyncIterator[Admin]:
    """A started meterproxy at 2026-01-06 on a test clock (its SQLite file `db`, default
    in tmp_path), stopped on exit unless the test stopped it."""
    clock = Clock(JAN.start_ms + 5 * DAY)
    config = load_config(write(tmp_path, upstream_port, db or tmp_path / "admin.db"))
    mp = MeterProxy(config, registry=CollectorRegistry(), clock=clock)
    await mp.start()
    await mp.scheduler.finished(1)  # its first run is over: the test alone moves things now
    try:
        async with aiohttp.ClientSession() as session:
            yield Admin(mp, clock, session)
    finally:
        if not mp.draining:
            await mp.stop()


async def seed(admin: Admin) -> Seeds:
    """January of `acme` billed and final, February open with usage, one of everything."""
    await admin.ingest(CUSTOMER, "api.call", JAN.start_ms + DAY)
    await admin.ingest(CUSTOMER, "image", JAN.start_ms + DAY, size="big", n=3)
    key = await admin.ok("POST", f"/v1/customers/{CUSTOMER}/keys")
    await admin.ok("POST", f"/v1/customers/{CUSTOMER}/credits",
                   {"grant_id": "welcome", "meter": "api_calls", "credits": "2.5"})
    await admin.ok("POST", f"/v1/customers/{CUSTOMER}/adjustments",
                   {"adjustment_id": "goodwill", "amount": "-1.005", "description": "Sorry"})
    await admin.run(FEB.start_ms + HOUR)
    [final] = (await admin.ok("GET", "/v1/statements", customer_id=CUSTOMER))["items"]
    admin.clock.now = FEB.start_ms + 2 * DAY
    event = {"event_id": SEED_EVENT, "customer_id": CUSTOMER, "event_name": "api.call",
             "metadata": {"n": "1.50", "exact": 0.1, "ok": True}}
    await admin.ok("POST", "/events/ingest", {"events": [event]})
    return Seeds(CUSTOMER, SEED_EVENT, key["key_id"], final["id"])
