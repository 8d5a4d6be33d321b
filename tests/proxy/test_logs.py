"""Logs: formatters with context, listener lines, the access log, error context, no secrets."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.logs import FirstTime, JsonFormatter, TextFormatter
from tests.conftest import AUTH, StartProxy
from tests.proxy.upstream import Upstream

CUSTOMER = {"X-Customer-Id": "acme"}
QUERY_SECRET = "qs-secret-6f1d2c"
TOKEN_RULES = """\
rules:
  - name: chat
    match: {method: POST, path: /v1/echo}
    event_name: api.call
    metadata:
      model: ${request.json.model}
"""


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, TestServer]:
    up = Upstream()
    return up, await aiohttp_server(up.app())


def url_of(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def record(message: str = "hello %s", *args: object, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("meterproxy.test", logging.WARNING, __file__, 1, message, args, None)
    rec.__dict__.update(extra)
    return rec


def ours(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name]


# ------------------------------------------------------------------ formatters


def test_json_lines_carry_the_context_fields() -> None:
    line = JsonFormatter().format(record("hello %s", "world", rule="chat", customer="acme"))
    entry = json.loads(line)
    assert entry["message"] == "hello world"
    assert entry["level"] == "warning"
    assert entry["logger"] == "meterproxy.test"
    assert (entry["rule"], entry["customer"]) == ("chat", "acme")


@pytest.mark.parametrize(
    ("extra", "suffix"),
    [
        ({}, "hello world"),
        ({"rule": "chat"}, "hello world rule=chat"),
        ({"customer": None, "n": 3}, "hello world customer=- n=3"),
        ({"path": "/a b"}, 'hello world path="/a b"'),
        ({"field": ""}, 'hello world field=""'),
    ],
)
def test_text_lines_append_the_context_as_key_value(extra: dict[str, Any], suffix: str) -> None:
    line = TextFormatter().format(record("hello %s", "world", **extra))
    assert line.endswith(" WARNING meterproxy.test: " + suffix)


def test_text_context_comes_before_a_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record(rule="chat")
        rec.exc_info = __import__("sys").exc_info()
    first, *rest = TextFormatter().format(rec).splitlines()
    assert first.endswith("rule=chat")
    assert rest[-1] == "ValueError: boom"


def test_first_time_is_true_once_per_key_and_bounded() -> None:
    seen = FirstTime(limit=2)
    assert [seen.first(k) for k in ("a", "a", "b", "c", "b")] == [True, False, True, False, False]


# ------------------------------------------------------------- through the proxy


async def test_one_line_per_listener_with_its_address(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    running = await start_proxy(url_of(upstream[1]))
    lines = [r for r in ours(caplog, "meterproxy") if "listening on" in r.getMessage()]
    assert {r.__dict__["listener"]: r.__dict__["address"] for r in lines} == {
        "proxy": f"127.0.0.1:{running.mp.port('proxy')}",
        "admin": f"127.0.0.1:{running.mp.port('admin')}",
    }


async def test_the_access_log_is_off_by_default(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    running = await start_proxy(url_of(upstream[1]))
    async with running.session.get(running.proxy_url + "/v1/echo", headers=CUSTOMER) as r:
        assert r.status == 200
    assert not ours(caplog, "meterproxy.access")


async def test_access_log_one_line_per_exchange_without_the_query(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    running = await start_proxy(url_of(upstream[1]), proxy_extra="access_log: true")
    async with running.session.get(
        running.proxy_url + f"/v1/bytes/1234?token={QUERY_SECRET}", headers=CUSTOMER
    ) as r:
        assert len(await r.read()) == 1234
    async with running.session.post(running.proxy_url + "/v1/echo") as r:
        assert r.status == 401
    lines = ours(caplog, "meterproxy.access")
    fields = [
        {k: r.__dict__[k] for k in ("method", "path", "status", "bytes", "customer")} for r in lines
    ]
    assert fields == [
        {"method": "GET", "path": "/v1/bytes/1234", "status": 200, "bytes": 1234,
         "customer": "acme"},
        {"method": "POST", "path": "/v1/echo", "status": 401,
         "bytes": lines[1].__dict__["bytes"], "customer": None},
    ]  # fmt: skip
    assert lines[1].__dict__["bytes"] > 0  # meterproxy's own JSON error body
    assert all(r.__dict__["duration_ms"] >= 0 for r in lines)
    text = TextFormatter().format(lines[0])
    assert text.split(": ", 1)[1].startswith(
        "exchange method=GET path=/v1/bytes/1234 status=200 bytes=1234 duration_ms="
    )
    assert text.endswith(" customer=acme")
    assert QUERY_SECRET not in text


async def test_a_rule_error_warns_once_with_its_context(
    upstream: tuple[Upstream, TestServer], start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    running = await start_proxy(url_of(upstream[1]), rules=TOKEN_RULES)
    for _ in range(3):
        async with running.session.post(
            running.proxy_url + "/v1/echo", json={"prompt": "hi"}, headers=CUSTOMER
        ) as r:
            assert r.status == 200
    lines = [r for r in ours(caplog, "meterproxy.proxy") if r.__dict__.get("rule") == "chat"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert {(r.__dict__["field"], r.__dict__["reason"], r.__dict__["customer"]) for r in lines} == {
        ("model", "missing", "acme")
    }
    assert running.metric("meterproxy_rule_errors_total", rule="chat", reason="missing") == 3


async def test_an_upstream_error_names_customer_and_reason(
    start_proxy: StartProxy, unused_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    running = await start_proxy(f"http://127.0.0.1:{unused_tcp_port}")
    async with running.session.get(running.proxy_url + "/v1/echo", headers=CUSTOMER) as r:
        assert r.status == 502
    [line] = [r for r in ours(caplog, "meterproxy.proxy") if r.levelno == logging.WARNING]
    assert (line.__dict__["reason"], line.__dict__["customer"]) == ("upstream_unreachable", "acme")


# ------------------------------------------------------------------- no secrets


@pytest.fixture
async def garbage_upstream() -> AsyncIterator[str]:
    """An upstream that answers with a malformed status line (a 502 with aiohttp's text)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 abc nonsense\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


async def test_no_key_or_token_reaches_any_log_line(
    upstream: tuple[Upstream, TestServer],
    garbage_upstream: str,
    start_proxy: StartProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy_extra = "access_log: true"
    running = await start_proxy(url_of(upstream[1]), rules=TOKEN_RULES, proxy_extra=proxy_extra)
    broken = await start_proxy(garbage_upstream, proxy_extra=proxy_extra, name="broken.yaml")
    session = running.session
    async with session.post(f"{running.admin_url}/v1/customers/acme/keys", headers=AUTH) as r:
        key = (await r.json())["key"]
    secrets = [key, AUTH["Authorization"].split()[1], QUERY_SECRET]
    with_key = {"Authorization": f"Bearer {key}"}
    query = f"?api_key={QUERY_SECRET}&token={key}"
    async with session.post(running.proxy_url + "/v1/echo" + query, json={}, headers=with_key) as r:
        assert r.status == 200
    async with session.post(broken.proxy_url + "/v1/echo" + query, json={}, headers=CUSTOMER) as r:
        assert r.status == 502
    async with session.get(running.proxy_url + "/v1/echo" + query, headers={
        "Authorization": f"Bearer {key}x"}) as r:  # fmt: skip
        assert r.status == 401
    async with session.get(f"{running.admin_url}/v1/customers" + query, headers=AUTH) as r:
        assert r.status == 200
    await running.flush()
    assert len(caplog.records) > 5  # listeners, access lines, a rule error, a 502
    # aiohttp.access lines come from the test upstream (meterproxy's listeners have none).
    for rec in (r for r in caplog.records if r.name != "aiohttp.access"):
        for formatter in (JsonFormatter(), TextFormatter()):
            line = formatter.format(rec)
            assert not [s for s in secrets if s in line], line
