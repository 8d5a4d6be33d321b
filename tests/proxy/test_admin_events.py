"""Event ingestion and reading through the admin API, including the official Dodo SDK."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import pytest
from dodopayments import AsyncDodoPayments

from billing.events import format_timestamp, now_ms
from billing.ingest import IngestWindow, InvalidBatch
from proxy.admin.events import _parse
from tests.conftest import ADMIN_TOKEN, AUTH, Running, StartProxy


@pytest.fixture
async def running(start_proxy: StartProxy, unused_tcp_port: int) -> Running:
    return await start_proxy(f"http://127.0.0.1:{unused_tcp_port}")


async def ingest(
    running: Running, events: list[dict[str, Any]], token: str = ADMIN_TOKEN
) -> tuple[int, Any]:
    async with running.session.post(
        f"{running.admin_url}/events/ingest",
        json={"events": events},
        headers={"Authorization": f"Bearer {token}"},
    ) as r:
        return r.status, await r.json()


async def test_the_official_sdk_ingests_and_reads_back(running: Running) -> None:
    client = AsyncDodoPayments(bearer_token=ADMIN_TOKEN, base_url=running.admin_url, max_retries=0)
    stamp = format_timestamp(now_ms() - 60_000)
    result = await client.usage_events.ingest(
        events=[
            {
                "event_id": "sdk-1",
                "customer_id": "acme",
                "event_name": "api.call",
                "timestamp": stamp,
                "metadata": {"endpoint": "/v1/x", "tokens": 12, "ok": True},
            },
            {"event_id": "sdk-2", "customer_id": "acme", "event_name": "api.call"},
        ]
    )
    assert result.ingested_count == 2
    again = await client.usage_events.ingest(
        events=[{"event_id": "sdk-1", "customer_id": "acme", "event_name": "other"}]
    )
    assert again.ingested_count == 0  # seen before: accepted, not counted, first one wins
    event = await client.usage_events.retrieve("sdk-1")
    assert event.event_name == "api.call"
    assert event.business_id == "meterproxy"
    assert event.metadata == {"endpoint": "/v1/x", "tokens": 12, "ok": True}
    assert format_timestamp(int(event.timestamp.timestamp() * 1000)) == stamp
    page = await client.usage_events.list(customer_id="acme", page_size=10)
    assert [e.event_id for e in page.items] == ["sdk-2", "sdk-1"]  # newest first
    await client.close()


async def test_numbers_read_back_exactly(running: Running) -> None:
    body = (
        b'{"events": [{"event_id": "n1", "customer_id": "acme", "event_name": "x",'
        b' "metadata": {"a": 0.1, "b": 1e3, "c": 12345678901234567890.000001}}]}'
    )
    async with running.session.post(
        f"{running.admin_url}/events/ingest", data=body, headers=AUTH
    ) as r:
        assert r.status == 200
    async with running.session.get(f"{running.admin_url}/events/n1", headers=AUTH) as r:
        text = await r.text()
    assert '"metadata":{"a":0.1,"b":1E+3,"c":12345678901234567890.000001}' in text


async def test_a_bad_batch_stores_nothing_and_names_every_problem(running: Running) -> None:
    status, body = await ingest(
        running,
        [
            {"event_id": "ok-1", "customer_id": "acme", "event_name": "x"},
            {"event_id": "bad-1", "customer_id": "acme", "event_name": ""},
            {
                "event_id": "bad-2",
                "customer_id": "a b",
                "event_name": "x",
                "metadata": {"nested": {"no": 1}},
            },
        ],
    )
    assert status == 400
    assert body["error"]["code"] == "invalid_events"
    details = [(d["index"], d["field"]) for d in body["error"]["details"]]
    assert details == [(1, "event_name"), (2, "customer_id"), (2, "metadata.nested")]
    assert await running.events() == []
    assert (
        running.metric(
            "meterproxy_events_total", event_name="api.call", source="api", outcome="rejected"
        )
        == 0
    )
    assert (
        running.metric(
            "meterproxy_events_total", event_name="__other__", source="api", outcome="rejected"
        )
        == 3
    )


async def test_body_over_5mb_is_413(running: Running) -> None:
    async with running.session.post(
        f"{running.admin_url}/events/ingest", data=b" " * 5_000_001, headers=AUTH
    ) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "request_too_large"


async def test_ingest_token_may_only_ingest(
    start_proxy: StartProxy, unused_tcp_port: int, tmp_path: Any
) -> None:
    from proxy.config import load_config
    from tests.conftest import write_config

    path = write_config(tmp_path, f"http://127.0.0.1:{unused_tcp_port}")
    path.write_text(
        path.read_text().replace(
            "  token: test-admin-token", "  token: test-admin-token\n  ingest_token: ingest-only"
        )
    )
    running = await start_proxy("", config=load_config(path))
    status, _ = await ingest(
        running, [{"event_id": "i1", "customer_id": "c", "event_name": "x"}], token="ingest-only"
    )
    assert status == 200
    async with running.session.get(
        f"{running.admin_url}/events", headers={"Authorization": "Bearer ingest-only"}
    ) as r:
        assert r.status == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/events/ingest"),
        ("GET", "/events"),
        ("GET", "/events/x"),
        ("GET", "/v1/meters"),
        ("GET", "/v1/customers"),
        ("GET", "/v1/customers/acme"),
        ("PUT", "/v1/customers/acme"),
        ("POST", "/v1/customers/acme/keys"),
        ("GET", "/v1/customers/acme/keys"),
        ("DELETE", "/v1/customers/acme/keys/k"),
    ],
)
@pytest.mark.parametrize("token", [None, "wrong", ADMIN_TOKEN + "x"])
async def test_routes_refuse_missing_or_wrong_tokens(
    running: Running, method: str, path: str, token: str | None
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with running.session.request(method, running.admin_url + path, headers=headers) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert (await r.json())["error"]["code"] == "unauthorized"


async def test_health_and_metrics_need_no_token(running: Running) -> None:
    for path in ("/healthz", "/readyz"):
        async with running.session.get(running.admin_url + path) as r:
            assert r.status == 200
    async with running.session.get(
        running.admin_url + "/metrics", headers={"Accept-Encoding": "identity"}
    ) as r:
        text = await r.text()
    assert "meterproxy_build_info{" in text


async def test_errors_are_json(running: Running) -> None:
    async with running.session.get(running.admin_url + "/nope", headers=AUTH) as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"
    async with running.session.patch(running.admin_url + "/v1/meters", headers=AUTH) as r:
        assert r.status == 405
        assert (await r.json())["error"]["code"] == "method_not_allowed"
    async with running.session.get(running.admin_url + "/events?page_size=500", headers=AUTH) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_request"


async def test_listing_filters(running: Running) -> None:
    now = now_ms()
    events = [
        {
            "event_id": f"e{i}",
            "customer_id": "acme" if i % 2 else "globex",
            "event_name": "api.call" if i % 3 else "bandwidth",
            "timestamp": format_timestamp(now - 60_000 + i * 1000),
            "metadata": {"bytes": i},
        }
        for i in range(12)
    ]
    assert (await ingest(running, events))[0] == 200
    got = await running.events(customer_id="acme", event_name="api.call")
    assert [e["event_id"] for e in got] == ["e11", "e7", "e5", "e1"]
    got = await running.events(meter_id="egress_bytes")
    assert [e["event_id"] for e in got] == ["e9", "e6", "e3", "e0"]
    got = await running.events(start=format_timestamp(now - 60_000 + 10_000))
    assert [e["event_id"] for e in got] == ["e11", "e10"]
    got = await running.events(page_size=5, page_number=2)
    assert [e["event_id"] for e in got] == ["e1", "e0"]


async def test_concurrent_ingests_of_one_id_store_it_once(running: Running) -> None:
    batch = [{"event_id": "same", "customer_id": "acme", "event_name": "api.call"}]
    results = await asyncio.gather(*(ingest(running, batch) for _ in range(10)))
    assert sorted(body["ingested_count"] for _, body in results) == [0] * 9 + [1]


@pytest.mark.parametrize("text", [b"\\ud800", b"a\\u0000b"])
async def test_text_no_store_can_hold_is_refused_and_ingest_goes_on(
    running: Running, text: bytes
) -> None:
    body = b'{"events": [{"event_id": "p1", "customer_id": "acme", "event_name": "' + text + b'"}]}'
    async with running.session.post(
        f"{running.admin_url}/events/ingest", data=body, headers=AUTH
    ) as r:
        assert r.status == 400
    status, result = await ingest(
        running, [{"event_id": "p2", "customer_id": "acme", "event_name": "x"}]
    )
    assert (status, result) == (200, {"ingested_count": 1})  # the writer is not stuck


async def test_an_event_the_store_refuses_is_422_and_the_rest_are_stored(
    running: Running,
) -> None:
    # A trigger makes SQLite refuse one event for what it holds, as a constraint would.
    with sqlite3.connect(running.mp.config.storage.path) as conn:
        conn.execute("CREATE TRIGGER poison BEFORE INSERT ON events"
                     " WHEN NEW.event_id = 'bad' BEGIN SELECT RAISE(ABORT, 'poison'); END")
    batch = [{"event_id": i, "customer_id": "acme", "event_name": "x"} for i in ("a", "bad", "b")]
    status, body = await ingest(running, batch)
    assert status == 422
    assert body["error"]["code"] == "events_rejected"
    assert body["error"]["event_ids"] == ["bad"]
    assert "poison" in body["error"]["message"]
    stored = await running.mp.store.list_events(limit=10)
    assert sorted(s.event.event_id for s in stored) == ["a", "b"]
    assert running.metric("meterproxy_events_total", event_name="__other__", source="api",
                          outcome="rejected") == 1
    status, body = await ingest(running, batch[:1] + batch[2:])  # re-sent without it
    assert (status, body) == (200, {"ingested_count": 0})


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (
            "POST",
            "/v1/customers/acme/adjustments",
            b'{"adjustment_id": "a1", "amount": "1", "description": "\\ud800"}',
        ),
        (
            "POST",
            "/v1/customers/acme/credits",
            b'{"grant_id": "g\\u0000", "meter": "api_calls", "credits": 5}',
        ),
        ("PUT", "/v1/customers/acme", b'{"plan": "basic", "note": ["\\udfff"]}'),
    ],
)
async def test_admin_bodies_with_unstorable_text_are_400_not_500(
    running: Running, method: str, path: str, body: bytes
) -> None:
    async with running.session.put(
        f"{running.admin_url}/v1/customers/acme", json={"plan": "basic"}, headers=AUTH
    ) as r:
        assert r.status == 200
    async with running.session.request(
        method, running.admin_url + path, data=body, headers=AUTH
    ) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_request"


async def test_a_batch_is_validated_only_in_its_turn() -> None:
    turn = asyncio.Lock()
    body = json.dumps(
        {"events": [{"event_id": f"t{i}", "customer_id": "acme", "event_name": "api.call"}
                    for i in range(1000)]}
    ).encode()
    window = IngestWindow(past_ms=3_600_000, future_ms=300_000)
    async with turn:  # another batch is being validated
        parsing = asyncio.ensure_future(_parse(turn, body, now_ms(), window))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not parsing.done()
    assert [e.event_id for e in await parsing] == [f"t{i}" for i in range(1000)]
    assert not turn.locked()


async def test_a_batch_that_fails_validation_gives_up_its_turn() -> None:
    turn = asyncio.Lock()
    window = IngestWindow(past_ms=3_600_000, future_ms=300_000)
    with pytest.raises(InvalidBatch):
        await _parse(turn, b'{"events": [{"event_id": "x"}]}', now_ms(), window)
    assert not turn.locked()
