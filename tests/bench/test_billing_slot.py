"""bench/billing_slot.py against admin apps with and without the billing routes, and the
period close timed on a copy of a (small) cached store."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench import bench_billing
from bench.billing_slot import CLOSE_FIGURE, CLOSE_TARGET, CLOSE_WHY, cached_store, rows
from bench.report import NOT_MEASURED

ServerFactory = Callable[..., Awaitable[TestServer]]


def _admin(with_billing: bool) -> web.Application:
    async def usage(request: web.Request) -> web.Response:
        return web.json_response({"customer_id": request.match_info["cid"], "lines": []})

    async def run(request: web.Request) -> web.Response:
        raise AssertionError("the probe must not run billing")

    app = web.Application()
    if with_billing:
        app.router.add_get("/v1/customers/{cid}/usage", usage)
        app.router.add_post("/v1/billing/run", run)
    return app


async def test_without_the_routes_both_rows_say_not_built(aiohttp_server: ServerFactory) -> None:
    server = await aiohttp_server(_admin(with_billing=False))
    url = str(server.make_url("")).rstrip("/")
    preview, close = await rows(url, "token", ["cus_00001"], 1_000_000)
    assert (preview.meterproxy, preview.result) == (NOT_MEASURED, "route not built yet")
    assert (close.meterproxy, close.result) == (NOT_MEASURED, "route not built yet")


async def test_with_the_routes_previews_are_timed_and_close_explained(
    aiohttp_server: ServerFactory,
) -> None:
    server = await aiohttp_server(_admin(with_billing=True))
    url = str(server.make_url("")).rstrip("/")
    preview, close = await rows(url, "token", ["a", "b"], 2_500_000)
    assert preview.figure.endswith("~2.5M events (ms)")
    assert preview.meterproxy.startswith("p50 ") and ", p99 " in preview.meterproxy
    assert preview.result == "2 customers"
    assert (close.meterproxy, close.result) == (NOT_MEASURED, CLOSE_WHY)


async def test_with_a_cached_store_the_close_is_timed_on_a_copy(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    # bench_billing's store, small: 40 customers' January; the close drafts and then
    # finalises a statement for each, on a copy (the cache keeps no statement).
    cache = tmp_path / "billing-cache.db"
    await bench_billing.generate(cache, events=2_000, customers=40)
    before = cache.read_bytes()
    server = await aiohttp_server(_admin(with_billing=True))
    url = str(server.make_url("")).rstrip("/")
    _, close = await rows(url, "token", ["a"], 1_000, cache)
    assert close.figure == CLOSE_FIGURE and close.target == CLOSE_TARGET
    assert re.fullmatch(r"drafts \d+\.\d, finals \d+\.\d", close.meterproxy)
    assert close.result == "40 drafts, then 40 final statements (bench_billing's store)"
    assert close.verdict == "met"  # 40 customers close in well under 10 s
    assert cache.read_bytes() == before


def test_the_cached_store_is_found_only_once_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert cached_store() is None
    bench_billing.default_cache().write_bytes(b"")
    assert cached_store() == tmp_path / "meterproxy-bench-billing-10000-10000000.db"
