"""bench/billing_slot.py against admin apps with and without the billing routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.billing_slot import CLOSE_WHY, rows
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
