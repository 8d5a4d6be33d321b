"""Customer identification through the real proxy: keys, headers, trust, public paths."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import AUTH, Running, StartProxy
from tests.proxy.upstream import Upstream


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, TestServer]:
    up = Upstream()
    return up, await aiohttp_server(up.app())


def url_of(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def new_key(running: Running, customer: str, body: Any = None) -> dict[str, Any]:
    async with running.session.post(
        f"{running.admin_url}/v1/customers/{customer}/keys", json=body, headers=AUTH
    ) as r:
        assert r.status == 201, await r.text()
        result: dict[str, Any] = await r.json()
        return result


async def test_keys_issue_list_and_revoke_at_once(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server))
    issued = await new_key(running, "globex")
    key = issued["key"]
    via_key = {"Authorization": f"Bearer {key}"}
    async with running.session.get(running.proxy_url + "/v1/echo", headers=via_key) as r:
        assert r.status == 200
    async with running.session.get(
        f"{running.admin_url}/v1/customers/globex/keys", headers=AUTH
    ) as r:
        [listed] = (await r.json())["items"]
    assert listed["key_id"] == issued["key_id"]
    assert listed["prefix"] == key[:8]
    assert key not in str(listed)
    async with running.session.delete(
        f"{running.admin_url}/v1/customers/globex/keys/{issued['key_id']}", headers=AUTH
    ) as r:
        assert r.status == 200
    async with running.session.get(running.proxy_url + "/v1/echo", headers=via_key) as r:
        assert r.status == 401  # revoked keys stop working at once on this instance
    async with running.session.delete(
        f"{running.admin_url}/v1/customers/globex/keys/{issued['key_id']}", headers=AUTH
    ) as r:
        assert r.status == 404


async def test_an_imported_key_works_and_cannot_be_imported_twice(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server))
    secret = "sk_live_imported_0123456789"
    assert (await new_key(running, "initech", {"key": secret}))["key"] == secret
    async with running.session.get(
        running.proxy_url + "/v1/echo", headers={"Authorization": f"Bearer {secret}"}
    ) as r:
        assert r.status == 200
        assert (await r.json())["headers"]["x-meterproxy-customer"] == ["initech"]
    async with running.session.post(
        f"{running.admin_url}/v1/customers/other/keys", json={"key": secret}, headers=AUTH
    ) as r:
        assert r.status == 409
    async with running.session.post(
        f"{running.admin_url}/v1/customers/other/keys", json={"key": "short"}, headers=AUTH
    ) as r:
        assert r.status == 400


async def test_keys_are_stored_only_as_hashes(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    _, server = upstream
    running = await start_proxy(url_of(server))
    key = (await new_key(running, "globex"))["key"]
    with sqlite3.connect(running.mp.config.storage.path) as db:  # sees the WAL too
        dump = "\n".join(db.iterdump())
    assert "globex" in dump
    assert key not in dump
    assert key[8:] not in dump


async def test_untrusted_peers_cannot_choose_their_customer_or_forwarding_headers(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    up, server = upstream
    running = await start_proxy(url_of(server), proxy_extra="trusted_proxies: [10.0.0.0/8]")
    spoof = {"X-Customer-Id": "acme", "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil"}
    async with running.session.get(running.proxy_url + "/v1/echo", headers=spoof) as r:
        assert r.status == 401  # the identity header is ignored from an untrusted peer
    key = (await new_key(running, "globex"))["key"]
    async with running.session.get(
        running.proxy_url + "/v1/echo", headers={**spoof, "Authorization": f"Bearer {key}"}
    ) as r:
        assert r.status == 200
    seen = up.seen[-1].headers
    assert seen["x-forwarded-for"] == ["127.0.0.1"]  # replaced, not appended to
    assert seen["x-forwarded-host"] != ["evil"]
    assert seen["x-meterproxy-customer"] == ["globex"]


async def test_trusted_peers_append_to_forwarding_headers(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    up, server = upstream
    running = await start_proxy(url_of(server))
    headers = {"X-Customer-Id": "acme", "X-Forwarded-For": "203.0.113.9"}
    async with running.session.get(running.proxy_url + "/v1/echo", headers=headers) as r:
        assert r.status == 200
    assert up.seen[-1].headers["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]


async def test_host_header_upstream(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy
) -> None:
    up, server = upstream
    running = await start_proxy(url_of(server), proxy_extra="host_header: upstream")
    async with running.session.get(
        running.proxy_url + "/v1/echo", headers={"X-Customer-Id": "acme"}
    ) as r:
        assert r.status == 200
    assert up.seen[-1].headers["host"] == [f"127.0.0.1:{server.port}"]


RESPONSE_IDENTIFIED = """\
rules:
  - name: calls
    match: {path: /**}
    event_name: api.call
"""


async def test_response_time_identification_with_pass(
    aiohttp_server: Any, start_proxy: StartProxy, tmp_path: Any
) -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        who = request.query.get("who")
        return web.Response(text="ok", headers={"X-Billing-Customer": who} if who else {})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = await aiohttp_server(app)
    from proxy.config import load_config
    from tests.conftest import write_config

    path = write_config(tmp_path, url_of(server), rules=RESPONSE_IDENTIFIED, unidentified="pass")
    path.write_text(
        path.read_text().replace(
            "    - ${request.header.x-customer-id}", "    - ${response.header.x-billing-customer}"
        )
    )
    running = await start_proxy("", config=load_config(path))
    for who in ("acme", "", "bad id"):
        async with running.session.get(f"{running.proxy_url}/x?who={who}") as r:
            assert r.status == 200  # unidentified: pass forwards everything
    events = await running.events()
    assert [e["customer_id"] for e in events] == ["acme"]
    assert running.metric("meterproxy_unidentified_requests_total") == 3


async def test_public_paths_and_preflights_skip_identification_and_events(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy, tmp_path: Any
) -> None:
    _, server = upstream
    from proxy.config import load_config
    from tests.conftest import write_config

    path = write_config(tmp_path, url_of(server))
    path.write_text(
        path.read_text().replace(
            "  unidentified: reject", "  unidentified: reject\n  public_paths: [/v1/echo/public/**]"
        )
    )
    running = await start_proxy("", config=load_config(path))
    async with running.session.get(running.proxy_url + "/v1/echo/public/docs") as r:
        assert r.status == 200
    preflight = {"Access-Control-Request-Method": "POST", "Origin": "https://app.example"}
    async with running.session.options(running.proxy_url + "/v1/echo", headers=preflight) as r:
        assert r.status == 200
    async with running.session.options(running.proxy_url + "/v1/echo") as r:
        assert r.status == 401  # a plain OPTIONS is not a preflight
    assert await running.events() == []


async def test_with_keys_only_a_client_cannot_choose_its_customer_by_headers(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy, tmp_path: Any
) -> None:
    up, server = upstream
    from proxy.config import load_config
    from tests.conftest import write_config

    path = write_config(tmp_path, url_of(server))
    path.write_text(path.read_text().replace("    - ${request.header.x-customer-id}\n", ""))
    running = await start_proxy("", config=load_config(path))
    key = (await new_key(running, "globex"))["key"]
    spoof = {
        "X-Customer-Id": "acme",
        "X-Meterproxy-Customer": "acme",
        "Authorization": f"Bearer {key}",
    }
    async with running.session.get(running.proxy_url + "/v1/echo", headers=spoof) as r:
        assert r.status == 200
    async with running.session.get(
        running.proxy_url + "/v1/echo", headers={"X-Customer-Id": "acme"}
    ) as r:
        assert r.status == 401
    assert up.seen[0].headers["x-meterproxy-customer"] == ["globex"]
    assert {e["customer_id"] for e in await running.events()} == {"globex"}
