"""Lines of the admin API contract that no other test holds: how customers come to exist,
events after a DELETE, paging on every list, readiness while draining and while the store
fails, the metrics-only listener, bounded instants, and JSON for every failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from billing.events import format_timestamp
from proxy.admin.operations import OPERATIONS
from proxy.admin.routes import json_errors
from tests.billing.test_engine_kit import DAY, FEB, HOUR
from tests.conftest import AUTH
from tests.proxy.admin_kit import running_admin
from tests.proxy.test_billing_api import Admin
from tests.proxy.upstream import Upstream
from tests.reliability.test_store_full import fill, small_disk


@pytest.fixture
async def admin(tmp_path: Path, unused_tcp_port: int) -> AsyncIterator[Admin]:
    async with running_admin(tmp_path, unused_tcp_port) as running:
        yield running


async def event(admin: Admin, event_id: str, customer: str, ts: int | None = None) -> Any:
    body = {"event_id": event_id, "customer_id": customer, "event_name": "api.call",
            "timestamp": None if ts is None else format_timestamp(ts)}
    return await admin.call("POST", "/events/ingest", {"events": [body]})


# ------------------------------------------------------------------ customers


@pytest.mark.parametrize("how", ["key", "put", "event"])
async def test_a_customer_exists_from_its_first_key_put_or_event(admin: Admin, how: str) -> None:
    assert (await admin.call("GET", "/v1/customers/newco"))[0] == 404
    created = admin.clock.now - HOUR if how == "event" else admin.clock.now
    if how == "key":
        await admin.ok("POST", "/v1/customers/newco/keys")
    elif how == "put":
        await admin.ok("PUT", "/v1/customers/newco", {"plan": None})
    else:
        assert await event(admin, "first", "newco", created) == (200, {"ingested_count": 1})
    customer = await admin.ok("GET", "/v1/customers/newco")
    assert (customer["plan"], customer["created_at"]) == ("pro", format_timestamp(created))


async def test_events_after_a_delete_are_stored_and_not_billed(admin: Admin) -> None:
    await event(admin, "before", "gone")
    deleted = admin.clock.now + DAY
    admin.clock.now = deleted
    assert (await admin.ok("DELETE", "/v1/customers/gone"))["deleted_at"] == format_timestamp(
        deleted)
    admin.clock.now = deleted + HOUR
    assert await event(admin, "after", "gone") == (200, {"ingested_count": 1})
    stored = await admin.ok("GET", "/events", customer_id="gone")
    assert [e["event_id"] for e in stored["items"]] == ["after", "before"]
    status, _ = await admin.call("GET", "/v1/customers/gone/usage")
    assert status == 404  # no period after the DELETE
    await admin.run(deleted + 2 * HOUR)
    [final] = (await admin.ok("GET", "/v1/statements", customer_id="gone"))["items"]
    [calls] = [line for line in final["lines"] if line["meter"] == "api_calls"]
    assert (final["status"], final["period_end"], calls["quantity"]) == (
        "final", "2026-01-07T00:00:00+00:00", "1")
    status, error = await admin.call("POST", "/v1/customers/gone/keys")
    assert (status, error["error"]["code"]) == (409, "customer_deleted")


async def test_events_list_newest_first_in_start_inclusive_end_exclusive(admin: Admin) -> None:
    t = admin.clock.now - 10 * HOUR
    for i in range(3):
        await event(admin, f"t{i}", "acme", t + i * HOUR)
    for start, end, expected in ((0, 3, ["t2", "t1", "t0"]), (1, 2, ["t1"]), (0, 1, ["t0"]),
                                 (1, 3, ["t2", "t1"])):
        found = await admin.ok("GET", "/events", start=format_timestamp(t + start * HOUR),
                               end=format_timestamp(t + end * HOUR))
        assert [e["event_id"] for e in found["items"]] == expected, (start, end)


async def test_meters_are_listed_with_their_configuration(admin: Admin) -> None:
    assert (await admin.ok("GET", "/v1/meters"))["items"] == [
        {"name": "api_calls", "event_name": "api.call", "aggregation": {"type": "count",
                                                                       "key": None},
         "filter": None, "measurement_unit": "calls"},
        {"name": "big_images", "event_name": "image", "aggregation": {"type": "sum", "key": "n"},
         "filter": {"conjunction": "and", "clauses": [
             {"key": "size", "operator": "equals", "value": "big"}]},
         "measurement_unit": None},
    ]


# ---------------------------------------------------------------------- paging

# Each list route of the document: the list of `c00` it is tested on, and its items' id.
LISTS: dict[str, tuple[str, dict[str, str], str]] = {
    "/events": ("/events", {"customer_id": "c00"}, "event_id"),
    "/v1/customers": ("/v1/customers", {}, "customer_id"),
    "/v1/customers/{customer_id}/keys": ("/v1/customers/c00/keys", {}, "key_id"),
    "/v1/customers/{customer_id}/credits": ("/v1/customers/c00/credits", {}, "grant_id"),
    "/v1/customers/{customer_id}/adjustments": (
        "/v1/customers/c00/adjustments", {}, "adjustment_id"),
    "/v1/statements": ("/v1/statements", {}, "id"),
}


async def twelve_of_everything(admin: Admin) -> None:
    for i in range(12):
        await admin.ok("PUT", f"/v1/customers/c{i:02}", {"plan": None})
        await event(admin, f"e{i:02}", "c00", admin.clock.now - i)
        await admin.ok("POST", "/v1/customers/c00/keys", {})
        await admin.ok("POST", "/v1/customers/c00/credits",
                       {"grant_id": f"g{i:02}", "meter": "api_calls", "credits": 1})
        await admin.ok("POST", "/v1/customers/c00/adjustments",
                       {"adjustment_id": f"a{i:02}", "amount": "1", "description": "x"})
    assert (await admin.run(FEB.start_ms + HOUR))["finalized"] == 12


def test_every_list_route_takes_page_size_and_page_number() -> None:
    lists = {(op.method, op.path) for op in OPERATIONS
             if "items" in str(op.replies[0].content)}
    assert lists == {("GET", path) for path in (*LISTS, "/v1/meters")}
    for op in OPERATIONS:
        names = {p.name for p in op.params if p.where == "query"}
        assert ({"page_size", "page_number"} <= names) == ((op.method, op.path) in lists)


async def ids(admin: Admin, template: str, **page: Any) -> list[str]:
    path, query, field = LISTS[template]
    answer = await admin.ok("GET", path, **query, **page)
    return [item[field] for item in answer["items"]]


@pytest.mark.parametrize("template", list(LISTS))
async def test_lists_page_by_10_up_to_100_from_page_0(admin: Admin, template: str) -> None:
    await twelve_of_everything(admin)
    everything = await ids(admin, template, page_size=100)
    assert len(set(everything)) == len(everything) == 12
    first = await ids(admin, template)
    assert (len(first), first + await ids(admin, template, page_number=1)) == (10, everything)
    assert await ids(admin, template, page_size=5, page_number=2) == everything[10:]
    assert await ids(admin, template, page_size=5, page_number=3) == []
    for bad in ({"page_size": 0}, {"page_size": 101}, {"page_size": "ten"},
                {"page_number": -1}, {"page_number": 10**10}):
        status, error = await admin.call("GET", LISTS[template][0], **bad)
        assert (status, error["error"]["code"]) == (400, "invalid_request"), bad


async def test_meters_page_too(admin: Admin) -> None:
    names = [[m["name"] for m in (await admin.ok("GET", "/v1/meters", page_size=1,
                                                 page_number=n))["items"]] for n in (0, 1, 2)]
    assert names == [["api_calls"], ["big_images"], []]


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(("method", "path", "body", "query"), [
    ("GET", "/v1/customers/acme/usage", None, {"at": "1969-12-31T23:59:59Z"}),
    ("GET", "/v1/customers/acme/usage", None, {"at": "9999-06-01T00:00:00Z"}),
    ("GET", "/events", None, {"end": "0001-01-01T00:00:00+23:59"}),
    ("GET", "/v1/statements", None, {"finalized_after": "10000-01-01T00:00:00Z"}),
    ("POST", "/v1/customers/acme/credits",
     {"grant_id": "g", "meter": "api_calls", "credits": 1,
      "effective_at": "0001-01-01T00:00:00+23:59"}, {}),
    ("POST", "/v1/customers/acme/credits",
     {"grant_id": "g", "meter": "api_calls", "credits": 1, "expires_at": 5}, {}),
])
async def test_instants_outside_1970_to_9999_are_400(
    admin: Admin, method: str, path: str, body: Any, query: dict[str, str]
) -> None:
    await event(admin, "e", "acme")
    status, error = await admin.call(method, path, body, **query)
    assert (status, error["error"]["code"]) == (400, "invalid_request")


async def test_an_event_id_with_nul_is_refused_and_ingest_goes_on(admin: Admin) -> None:
    for _ in range(2):  # the second try once wedged the writer on a UNIQUE error
        status, error = await event(admin, "a\x00b", "acme")
        assert (status, error["error"]["details"][0]["field"]) == (400, "event_id")
    assert await event(admin, "a", "acme") == (200, {"ingested_count": 1})


async def test_an_unexpected_failure_is_a_json_500_and_logged(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/broken", broken)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR, logger="meterproxy.admin"):
        async with client.get("/broken") as r:
            assert (r.status, await r.json()) == (500, {"error": {
                "code": "internal_error", "message": "meterproxy failed to answer; see its log"}})
    assert "a bug" in caplog.text


# ------------------------------------------------------------ listeners, readiness


async def test_the_metrics_listener_serves_only_metrics_and_healthz(admin: Admin) -> None:
    url = f"http://127.0.0.1:{admin.mp.port('metrics')}"
    async with admin.session.get(url + "/metrics") as r:
        assert r.status == 200 and "meterproxy_build_info" in await r.text()
    async with admin.session.get(url + "/healthz") as r:
        assert (r.status, await r.json()) == (200, {"status": "ok"})
    for method, path, status in [("GET", "/readyz", 404), ("GET", "/openapi.json", 404),
                                 ("GET", "/v1/meters", 404), ("POST", "/events/ingest", 404),
                                 ("POST", "/metrics", 405)]:
        async with admin.session.request(method, url + path, headers=AUTH) as r:
            assert r.status == status, path
            assert (await r.json())["error"]["code"] in ("not_found", "method_not_allowed")


async def readyz(admin: Admin) -> tuple[int, Any]:
    async with admin.session.get(admin.url + "/readyz") as r:
        return r.status, await r.json()


async def test_readyz_is_503_while_draining_for_a_stop(aiohttp_server: Any, tmp_path: Path) -> None:
    up = Upstream()
    server = await aiohttp_server(up.app())
    async with running_admin(tmp_path, server.port) as admin:
        assert await readyz(admin) == (200, {"status": "ready"})
        key = (await admin.ok("POST", "/v1/customers/acme/keys"))["key"]
        proxy = f"http://127.0.0.1:{admin.mp.port('proxy')}/v1/sse-gated"
        async with aiohttp.ClientSession() as client, client.get(
            proxy, headers={"Authorization": f"Bearer {key}"}
        ) as streaming:
            await streaming.content.readuntil(b"\n\n")  # in flight: the stop must wait for it
            stopping = asyncio.ensure_future(admin.mp.stop())
            status, body = await readyz(admin)
            assert (status, body["status"], body["error"]["code"]) == (503, "draining", "draining")
            async with admin.session.get(admin.url + "/healthz") as r:
                assert r.status == 200  # alive, just not taking traffic
            up.gate.set()
            assert b"tokens" in await streaming.read()
        await stopping


async def test_readyz_is_503_while_the_store_rejects_writes(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        async with running_admin(tmp_path, 1, db=disk / "m.db") as admin:
            junk = fill(disk)
            ingest = asyncio.ensure_future(event(admin, "during", "acme"))  # durable: it waits
            while (await readyz(admin))[0] == 200:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # the failing flush is on the store's thread
            status, body = await readyz(admin)
            assert (status, body["error"]["code"]) == (503, "store_rejecting")
            junk.unlink()  # room again: the writer's retry stores the event
            assert await ingest == (200, {"ingested_count": 1})
            assert await readyz(admin) == (200, {"status": "ready"})


async def status_within_5s(session: aiohttp.ClientSession, url: str, key: str,
                           expected: int) -> None:
    """Poll until `url` answers `expected` to `key`; fail if 5 s pass first (the contract's
    bound for a key change to reach every replica)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as r:
            if r.status == expected:
                return
        assert loop.time() < deadline, f"still {r.status} after 5 s"
        await asyncio.sleep(0.05)


async def test_a_key_change_reaches_another_instance_within_5s(
    aiohttp_server: Any, tmp_path: Path
) -> None:
    server = await aiohttp_server(Upstream().app())
    db = tmp_path / "shared.db"
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    async with running_admin(tmp_path / "a", server.port, db) as a, running_admin(
        tmp_path / "b", server.port, db
    ) as b:
        via_b = f"http://127.0.0.1:{b.mp.port('proxy')}/v1/echo"
        issued = await a.ok("POST", "/v1/customers/acme/keys")
        await status_within_5s(b.session, via_b, issued["key"], 200)
        await a.ok("DELETE", f"/v1/customers/acme/keys/{issued['key_id']}")
        await status_within_5s(b.session, via_b, issued["key"], 401)
