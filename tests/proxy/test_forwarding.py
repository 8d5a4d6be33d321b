"""Forwarding through the real proxy to a real upstream: methods, paths, headers, errors."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import StartProxy
from tests.proxy.upstream import Upstream

CUSTOMER = {"X-Customer-Id": "acme"}


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, TestServer]:
    up = Upstream()
    server = await aiohttp_server(up.app())
    return up, server


def url_of(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"])
@pytest.mark.parametrize(
    "raw_path",
    [
        "/v1/echo",
        "/v1/echo/a%2Fb/c?x=1&x=2&y=%20z",
        "/v1/echo/./a/../b//c?q=%E2%82%AC",
        "/v1/echo/%7Euser?empty=&flag",
    ],
)
async def test_method_path_query_and_body_reach_the_upstream_unchanged(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy, method: str, raw_path: str
) -> None:
    up, server = upstream
    running = await start_proxy(url_of(server))
    body = b"" if method in ("GET", "OPTIONS") else b'{"hello": "world"}'
    async with running.session.request(
        method,
        aiohttp.client.URL(running.proxy_url + raw_path, encoded=True),
        data=body or None,
        headers=CUSTOMER,
    ) as response:
        assert response.status == 200, await response.text()
    [seen] = up.seen
    assert seen.method == method
    assert seen.raw_path == raw_path
    assert seen.body == body


async def test_request_headers(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    up, server = upstream
    running = await start_proxy(url_of(server))
    headers = {
        "X-Customer-Id": "acme",
        "X-Meterproxy-Customer": "mallory",
        "Connection": "X-Drop",
        "X-Drop": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "X-Keep": "kept",
        "Accept-Encoding": "br",
        "Proxy-Authorization": "Basic eA==",
    }
    async with running.session.get(running.proxy_url + "/v1/echo", headers=headers) as r:
        assert r.status == 200
    seen = up.seen[0].headers
    for gone in ("x-drop", "keep-alive", "te", "proxy-authorization"):
        assert gone not in seen, gone
    assert seen["x-keep"] == ["kept"]
    assert seen["accept-encoding"] == ["br"]
    assert seen["x-meterproxy-customer"] == ["acme"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{running.mp.port('proxy')}"]
    assert seen["host"] == [f"127.0.0.1:{running.mp.port('proxy')}"]  # host_header: client
    assert "user-agent" in seen  # the client's own (aiohttp's), not one the proxy added


async def test_api_key_header_is_not_forwarded(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    up, server = upstream
    running = await start_proxy(url_of(server))
    async with running.session.post(
        f"{running.admin_url}/v1/customers/globex/keys",
        headers={"Authorization": "Bearer test-admin-token"},
    ) as r:
        key = (await r.json())["key"]
    async with running.session.get(
        running.proxy_url + "/v1/echo", headers={"Authorization": f"Bearer {key}"}
    ) as r:
        assert r.status == 200
    seen = up.seen[0].headers
    assert "authorization" not in seen
    assert seen["x-meterproxy-customer"] == ["globex"]


async def test_response_headers(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server), proxy_extra="strip_response_headers: [x-usage-*]")
    async with running.session.get(running.proxy_url + "/v1/headers", headers=CUSTOMER) as r:
        assert r.status == 200
        assert await r.text() == "ok"
        assert r.headers["X-Kept"] == "yes"
        for gone in ("X-Usage-Tokens", "X-Usage-Model", "X-Hop", "Keep-Alive"):
            assert gone not in r.headers, gone
        assert r.headers["Server"].startswith("Python")  # the upstream's own Server header


async def test_redirects_pass_through(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    up, server = upstream
    running = await start_proxy(url_of(server))
    async with running.session.get(
        running.proxy_url + "/v1/redirect", headers=CUSTOMER, allow_redirects=False
    ) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/v1/elsewhere"
    assert len(up.seen) == 1


async def test_compressed_bodies_pass_untouched(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server))
    async with running.session.get(running.proxy_url + "/v1/gzip", headers=CUSTOMER) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        raw = await r.read()
    assert json.loads(gzip.decompress(raw)) == {"usage": {"tokens": 7}}
    [bandwidth] = [e for e in await running.events() if e["event_name"] == "bandwidth"]
    assert bandwidth["metadata"]["bytes"] == len(raw)  # bytes as on the wire


@pytest.mark.parametrize("status", [200, 201, 204, 301, 304, 400, 404, 418, 500, 503])
async def test_statuses_pass_through(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy, status: int
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server))
    async with running.session.get(
        f"{server.make_url('')}v1/status/{status}".replace(
            str(server.make_url("")), running.proxy_url + "/"
        ),
        headers=CUSTOMER,
        allow_redirects=False,
    ) as via_proxy:
        proxied = (
            via_proxy.status,
            await via_proxy.read(),
            via_proxy.headers.get("ETag"),
            via_proxy.headers.get("Content-Length"),
        )
    async with running.session.get(
        f"{url_of(server)}/v1/status/{status}", allow_redirects=False
    ) as direct:
        expected = (
            direct.status,
            await direct.read(),
            direct.headers.get("ETag"),
            direct.headers.get("Content-Length"),
        )
    assert proxied == expected


async def test_head_behaves_as_without_the_proxy(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server))
    async with running.session.head(running.proxy_url + "/v1/bytes/5000", headers=CUSTOMER) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "5000"
        assert await r.read() == b""


async def test_unreachable_upstream_is_502(start_proxy: StartProxy, unused_tcp_port: int) -> None:
    running = await start_proxy(f"http://127.0.0.1:{unused_tcp_port}")
    async with running.session.get(running.proxy_url + "/v1/x", headers=CUSTOMER) as r:
        assert r.status == 502
        body = await r.json()
    assert body["error"]["code"] == "bad_gateway"
    assert running.metric("meterproxy_proxy_errors_total", reason="upstream_unreachable") == 1
    assert await running.events() == []  # meterproxy's own answers emit no events


async def test_read_timeout_is_504(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server), proxy_extra="timeouts: {read: 200ms}")
    async with running.session.get(running.proxy_url + "/v1/slow?s=3", headers=CUSTOMER) as r:
        assert r.status == 504
        assert (await r.json())["error"]["code"] == "gateway_timeout"


async def test_declared_body_over_the_limit_is_413_before_the_upstream(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    up, server = upstream
    running = await start_proxy(url_of(server), proxy_extra="max_request_body: 1KB")
    async with running.session.post(
        running.proxy_url + "/v1/sink", data=b"x" * 1001, headers=CUSTOMER
    ) as r:
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "request_too_large"
    assert up.seen == []


async def test_chunked_body_crossing_the_limit_is_413(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server), proxy_extra="max_request_body: 100KB")

    async def chunks() -> Any:
        for _ in range(20):
            yield b"y" * 10_000

    async with running.session.post(
        running.proxy_url + "/v1/sink", data=chunks(), headers=CUSTOMER
    ) as r:
        assert r.status == 413


async def test_unidentified_is_401_and_the_upstream_is_not_called(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    up, server = upstream
    running = await start_proxy(url_of(server))
    async with running.session.get(running.proxy_url + "/v1/echo") as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert (await r.json())["error"]["code"] == "unidentified"
    async with running.session.get(
        running.proxy_url + "/v1/echo", headers={"Authorization": "Bearer wrong-key"}
    ) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "invalid_api_key"
    async with running.session.get(
        running.proxy_url + "/v1/echo", headers={"X-Customer-Id": "not valid!"}
    ) as r:
        assert r.status == 401
    assert up.seen == []
    assert running.metric("meterproxy_unidentified_requests_total") == 2


async def test_sse_events_arrive_as_the_upstream_sends_them(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    up, server = upstream
    running = await start_proxy(url_of(server))
    async with running.session.get(running.proxy_url + "/v1/sse-gated", headers=CUSTOMER) as r:
        first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), timeout=5)
        assert first == b'data: {"n": 1}\n\n'
        assert not up.gate.is_set()  # the second event is not even written yet
        up.gate.set()
        rest = await r.read()
    assert rest == b'data: {"n": 2, "usage": {"tokens": 5}}\n\n'


async def test_events_are_emitted_per_matching_rule(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server))
    async with running.session.post(
        running.proxy_url + "/v1/echo/x?y=1", data=b"12345", headers=CUSTOMER
    ) as r:
        body = await r.read()
    events = await running.events(customer_id="acme")
    by_name = {e["event_name"]: e for e in events}
    assert set(by_name) == {"api.call", "bandwidth"}
    assert by_name["api.call"]["metadata"] == {
        "method": "POST",
        "endpoint": "/v1/echo/x",
        "status": 200,
    }
    assert by_name["bandwidth"]["metadata"] == {
        "bytes": len(body),
        "request_bytes": 5,
        "aborted": False,
    }
    for e in events:
        assert e["event_id"].startswith("mp_")
        assert e["customer_id"] == "acme"
        assert e["business_id"] == "meterproxy"
    assert running.metric("meterproxy_requests_total", rule="api-calls", status_class="2xx") == 1


async def test_status_class_filters_rules(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server))
    async with running.session.get(running.proxy_url + "/v1/status/404", headers=CUSTOMER) as r:
        await r.read()
    names = sorted(e["event_name"] for e in await running.events())
    assert names == ["bandwidth"]  # api-calls counts 2xx only; egress counts any


async def test_upstream_cut_mid_body_truncates_the_client_and_marks_aborted(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server))
    with pytest.raises(aiohttp.ClientPayloadError):
        async with running.session.get(running.proxy_url + "/v1/cut", headers=CUSTOMER) as r:
            assert r.status == 200
            await r.read()
    [bandwidth] = [e for e in await running.events() if e["event_name"] == "bandwidth"]
    assert bandwidth["metadata"]["aborted"] is True
    assert bandwidth["metadata"]["bytes"] == 10
