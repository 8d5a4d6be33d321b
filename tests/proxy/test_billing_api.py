"""The billing routes of the admin API on a running meterproxy whose clock the test moves:
previews, runs, statements (JSON, CSV, HTML), credits, adjustments, plan changes, DELETE,
paging and JSON errors."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from billing.events import format_timestamp
from proxy.app import MeterProxy
from proxy.config import load_config
from tests.billing.test_engine_kit import DAY, FEB, HOUR, JAN, MAR, Clock
from tests.conftest import ADMIN_TOKEN, AUTH

CONFIG = """\
proxy: {{listen: "127.0.0.1:0", upstream: "http://127.0.0.1:{port}"}}
admin: {{listen: "127.0.0.1:0", token: {token}}}
storage: {{path: {db}, flush_interval: 10ms}}
customers:
  identify:
    - api_key: {{header: Authorization, scheme: Bearer}}
rules:
  - {{name: calls, match: {{path: /v1/**}}, event_name: api.call}}
meters:
  - {{name: api_calls, event_name: api.call, aggregation: {{type: count}}}}
  - {{name: peak_seats, event_name: seats.reported, aggregation: {{type: max, key: seats}}}}
plans:
  - name: pro
    currency: USD
    cycle: monthly
    fixed_price: "49.00"
    prices:
      - {{meter: api_calls, price_per_unit: "0.01", free_threshold: 2}}
      - {{meter: peak_seats, price_per_unit: "2", free_threshold: 5}}
  - name: basic
    currency: USD
    cycle: monthly
    prices:
      - {{meter: api_calls, price_per_unit: "0.05"}}
billing: {{default_plan: pro, grace_period: 1h, ingest_window: {{past: 40d, future: 5m}}}}
"""
_ids = itertools.count()


class Admin:
    """A started meterproxy with a test clock, and JSON calls to its admin API."""

    def __init__(self, mp: MeterProxy, clock: Clock, session: aiohttp.ClientSession) -> None:
        self.mp, self.clock, self.session = mp, clock, session
        self.url = f"http://127.0.0.1:{mp.port('admin')}"

    async def call(self, method: str, path: str, body: Any = None,
                   **params: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.url + path, json=body, params=params,
                                        headers=AUTH) as r:
            return r.status, await r.json()

    async def ok(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        status, answer = await self.call(method, path, body, **params)
        assert status in (200, 201), answer
        return answer

    async def ingest(self, customer: str, name: str, ts: int, **metadata: Any) -> None:
        event = {"event_id": f"ev{next(_ids)}", "customer_id": customer, "event_name": name,
                 "timestamp": format_timestamp(ts), "metadata": metadata}
        assert (await self.ok("POST", "/events/ingest", {"events": [event]})
                ) == {"ingested_count": 1}

    async def run(self, at: int) -> dict[str, int]:
        self.clock.now = at
        answer: dict[str, int] = await self.ok("POST", "/v1/billing/run")
        return answer


@pytest.fixture
async def admin(tmp_path: Path, unused_tcp_port: int) -> AsyncIterator[Admin]:
    path = tmp_path / "meterproxy.yaml"
    path.write_text(CONFIG.format(port=unused_tcp_port, token=ADMIN_TOKEN,
                                  db=tmp_path / "billing.db"))
    clock = Clock(JAN.start_ms + 5 * DAY)
    mp = MeterProxy(load_config(path), registry=CollectorRegistry(), clock=clock)
    await mp.start()
    await mp.scheduler.finished(1)  # its first run is over: the test alone moves things now
    async with aiohttp.ClientSession() as session:
        yield Admin(mp, clock, session)
    await mp.stop()


def amounts(statement: dict[str, Any]) -> dict[str, str]:
    return {line["description"]: line["amount"] for line in statement["lines"]}


# -------------------------------------------------------------- preview, runs


async def test_the_usage_preview_shows_the_open_period(admin: Admin) -> None:
    for seats in (7, 9):  # the first event creates acme: at the period start
        await admin.ingest("acme", "seats.reported", JAN.start_ms, seats=seats)
    for _ in range(3):
        await admin.ingest("acme", "api.call", JAN.start_ms + 2 * DAY)
    preview = await admin.ok("GET", "/v1/customers/acme/usage")
    assert (preview["status"], preview["period_start"], preview["period_end"]) == (
        "open", "2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00")
    assert preview["at"] == format_timestamp(admin.clock.now)
    usage = {line["meter"]: line for line in preview["lines"] if line["type"] == "usage"}
    assert (usage["api_calls"]["quantity"], usage["api_calls"]["free_units"],
            usage["api_calls"]["billable_units"], usage["api_calls"]["amount"]) == (
        "3", "2", "1", "0.01")
    assert usage["peak_seats"]["amount"] == "8.00"  # 9 seats, 5 free, $2
    assert (preview["total"], preview["total_minor"]) == ("57.01", 5701)
    earlier = await admin.ok("GET", "/v1/customers/acme/usage", at="2026-01-01T12:00:00Z")
    assert earlier["lines"] == preview["lines"]


@pytest.mark.parametrize(("path", "params", "status", "code"), [
    ("/v1/customers/nobody/usage", {}, 404, "not_found"),
    ("/v1/customers/acme/usage", {"at": "yesterday"}, 400, "invalid_request"),
    ("/v1/customers/bad%20id/usage", {}, 400, "invalid_request"),
    ("/v1/statements", {"status": "open"}, 400, "invalid_request"),
    ("/v1/statements", {"page_size": "101"}, 400, "invalid_request"),
    ("/v1/statements", {"page_number": "-1"}, 400, "invalid_request"),
    ("/v1/statements", {"finalized_after": "soon"}, 400, "invalid_request"),
    ("/v1/statements/st_nothing", {}, 404, "not_found"),
    ("/v1/customers/nobody/credits", {}, 404, "not_found"),
    ("/v1/customers/nobody/adjustments", {}, 404, "not_found"),
    ("/v1/customers/acme/credits", {"page_size": "0"}, 400, "invalid_request"),
    ("/v1/customers/acme/usage", {"at": "2026-03-01T00:00:00Z"}, 404, "not_found"),
])
async def test_errors_are_json_with_a_stable_code(
    admin: Admin, path: str, params: dict[str, str], status: int, code: str
) -> None:
    await admin.ingest("acme", "api.call", JAN.start_ms + DAY)
    answer = await admin.call("GET", path, **params)
    assert (answer[0], answer[1]["error"]["code"]) == (status, code)


async def test_runs_draft_then_finalise_and_are_idempotent(admin: Admin) -> None:
    for customer in ("a", "b"):
        await admin.ingest(customer, "api.call", JAN.start_ms + DAY)
    assert await admin.run(FEB.start_ms) == {"drafted": 2, "finalized": 0}
    assert await admin.run(FEB.start_ms + 1) == {"drafted": 0, "finalized": 0}
    runs = [admin.ok("POST", "/v1/billing/run") for _ in range(5)]
    admin.clock.now = FEB.start_ms + HOUR
    results = await asyncio.gather(*runs)
    assert sum(r["finalized"] for r in results) == 2 and sum(r["drafted"] for r in results) == 0
    listed = await admin.ok("GET", "/v1/statements", page_size=100)
    assert sorted((s["customer_id"], s["status"]) for s in listed["items"]) == [
        ("a", "final"), ("b", "final")]


# ------------------------------------------------------------------ statements


async def test_statements_are_listed_paged_and_rendered(admin: Admin) -> None:
    for customer in ("a", "b", "c"):
        await admin.ingest(customer, "api.call", JAN.start_ms + DAY)
    await admin.run(FEB.start_ms + HOUR)
    await admin.ingest("a", "api.call", FEB.start_ms + HOUR)
    await admin.run(MAR.start_ms)  # February: three drafts
    finals = await admin.ok("GET", "/v1/statements", status="final", page_size=2)
    second = await admin.ok("GET", "/v1/statements", status="final", page_size=2, page_number=1)
    assert [len(finals["items"]), len(second["items"])] == [2, 1]
    assert {s["finalized_at"] for s in finals["items"] + second["items"]} == {
        format_timestamp(FEB.start_ms + HOUR)}
    drafts = await admin.ok("GET", "/v1/statements", status="draft", customer_id="a")
    [draft] = drafts["items"]
    assert (draft["period_start"], draft["finalized_at"]) == ("2026-02-01T00:00:00+00:00", None)
    assert (await admin.ok("GET", "/v1/statements",
                           finalized_after=format_timestamp(FEB.start_ms + HOUR)))["items"] == []
    statement = await admin.ok("GET", f"/v1/statements/{draft['id']}")
    assert statement == draft
    assert amounts(statement) == {"Fixed price": "49.00", "api_calls": "0.00",
                                  "peak_seats": "0.00"}
    url = f"{admin.url}/v1/statements/{draft['id']}"
    async with admin.session.get(url, params={"format": "csv"}, headers=AUTH) as r:
        assert r.content_type == "text/csv"
        rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert [(row["type"], row["amount"]) for row in rows] == [
        ("fixed", "49.00"), ("usage", "0.00"), ("usage", "0.00")]
    async with admin.session.get(url, params={"format": "html"}, headers=AUTH) as r:
        page = await r.text()
        assert r.content_type == "text/html" and "<script" not in page
        assert draft["id"] in page and "49.00 USD" in page
    status, error = await admin.call("GET", f"/v1/statements/{draft['id']}", format="pdf")
    assert (status, error["error"]["code"]) == (400, "invalid_request")


# --------------------------------------------------------- credits, adjustments


async def test_credit_grants_are_idempotent_and_listed_with_balances(admin: Admin) -> None:
    await admin.ingest("acme", "api.call", JAN.start_ms + DAY)
    grant = {"grant_id": "welcome", "meter": "api_calls", "credits": "5",
             "effective_at": "2026-01-01T00:00:00Z", "expires_at": "2026-03-01T00:00:00Z"}
    status, first = await admin.call("POST", "/v1/customers/acme/credits", grant)
    assert status == 201
    assert (first["credits"], first["remaining"], first["expired"]) == (5, 0 + 5, False)
    assert await admin.call("POST", "/v1/customers/acme/credits", grant) == (200, first)
    status, error = await admin.call("POST", "/v1/customers/acme/credits",
                                     {**grant, "credits": 6})
    assert (status, error["error"]["code"]) == (409, "conflict")
    for bad, code in (({**grant, "meter": "nope"}, "unknown_meter"),
                      ({**grant, "credits": 0}, "invalid_request"),
                      ({**grant, "credits": True}, "invalid_request"),
                      ({**grant, "grant_id": ""}, "invalid_request"),
                      ({**grant, "expires_at": "2025-01-01T00:00:00Z"}, "invalid_request")):
        status, error = await admin.call("POST", "/v1/customers/acme/credits", bad)
        assert (status, error["error"]["code"]) == (400, code), bad
    for _ in range(3):
        await admin.ingest("acme", "api.call", JAN.start_ms + 2 * DAY)
    await admin.run(FEB.start_ms + HOUR)
    [listed] = (await admin.ok("GET", "/v1/customers/acme/credits"))["items"]
    assert (listed["burned"], listed["remaining"]) == (2, 3)  # 4 calls, 2 free, 2 covered
    admin.clock.now = MAR.start_ms
    [listed] = (await admin.ok("GET", "/v1/customers/acme/credits"))["items"]
    assert listed["expired"] is True


async def test_a_manual_adjustment_lands_on_the_next_final_statement(admin: Admin) -> None:
    await admin.ingest("acme", "api.call", JAN.start_ms)
    body = {"adjustment_id": "refund-7", "amount": "-10.005", "description": "Outage credit"}
    status, created = await admin.call("POST", "/v1/customers/acme/adjustments", body)
    assert status == 201 and created["statement_id"] is None
    assert await admin.call("POST", "/v1/customers/acme/adjustments", body) == (200, created)
    status, error = await admin.call("POST", "/v1/customers/acme/adjustments",
                                     {**body, "amount": 1})
    assert (status, error["error"]["code"]) == (409, "conflict")
    await admin.run(FEB.start_ms + HOUR)
    [final] = (await admin.ok("GET", "/v1/statements", customer_id="acme"))["items"]
    assert amounts(final)["Outage credit"] == "-10.01"  # half away from zero
    assert (final["subtotal"], final["total"]) == ("49.00", "38.99")
    [entry] = (await admin.ok("GET", "/v1/customers/acme/adjustments"))["items"]
    assert entry["statement_id"] == final["id"]
    assert (await admin.ok("GET", "/v1/customers/acme/adjustments", page_number=1)
            )["items"] == []


# ------------------------------------------------------------ customers, plans


async def test_a_plan_change_is_pending_until_the_next_period(admin: Admin) -> None:
    await admin.ingest("acme", "api.call", JAN.start_ms + DAY)
    customer = await admin.ok("PUT", "/v1/customers/acme", {"plan": "basic"})
    assert (customer["plan"], customer["pending_plan"], customer["pending_from"]) == (
        "pro", "basic", "2026-02-01T00:00:00.000Z")
    listed = await admin.ok("GET", "/v1/customers")
    assert listed["items"] == [customer]
    fresh = await admin.ok("PUT", "/v1/customers/newco", {"plan": "basic"})
    assert (fresh["plan"], fresh["pending_plan"]) == ("basic", None)  # new: at once
    status, error = await admin.call("PUT", "/v1/customers/acme", {"plan": "gold"})
    assert (status, error["error"]["code"]) == (400, "unknown_plan")
    await admin.run(FEB.start_ms + HOUR)
    admin.clock.now = FEB.start_ms + DAY
    assert (await admin.ok("GET", "/v1/customers/acme"))["plan"] == "basic"
    preview = await admin.ok("GET", "/v1/customers/acme/usage")
    assert preview["plan"] == "basic"


async def test_delete_revokes_keys_and_ends_the_period(admin: Admin) -> None:
    admin.clock.now = JAN.start_ms
    key = (await admin.ok("POST", "/v1/customers/acme/keys"))["key"]  # acme exists from now
    deleted = JAN.start_ms + 10 * DAY
    admin.clock.now = deleted
    customer = await admin.ok("DELETE", "/v1/customers/acme")
    assert customer["deleted_at"] == format_timestamp(deleted)
    [listed] = (await admin.ok("GET", "/v1/customers/acme/keys"))["items"]
    assert listed["revoked_at"] == format_timestamp(deleted)
    assert (await admin.ok("DELETE", "/v1/customers/acme"))["deleted_at"] == customer["deleted_at"]
    status, error = await admin.call("PUT", "/v1/customers/acme", {"plan": "basic"})
    assert (status, error["error"]["code"]) == (409, "customer_deleted")
    status, error = await admin.call("POST", "/v1/customers/acme/credits", {
        "grant_id": "g", "meter": "api_calls", "credits": 1})
    assert (status, error["error"]["code"]) == (409, "customer_deleted")
    assert (await admin.call("DELETE", "/v1/customers/nobody"))[0] == 404
    proxy = f"http://127.0.0.1:{admin.mp.port('proxy')}/v1/x"
    async with admin.session.get(proxy, headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 401  # the key was revoked at once
    await admin.run(deleted + HOUR)
    [final] = (await admin.ok("GET", "/v1/statements", customer_id="acme"))["items"]
    assert (final["status"], final["period_end"]) == ("final", "2026-01-11T00:00:00+00:00")
    [fixed] = [line for line in final["lines"] if line["type"] == "fixed"]
    assert (fixed["description"], fixed["amount"]) == (
        "Fixed price, prorated: 32.3% of the period", "15.81")  # $49 x 10/31
