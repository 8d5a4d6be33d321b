"""The unauthenticated routes: liveness, readiness and the Prometheus scrape."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from proxy.admin.jsonout import json_response

if TYPE_CHECKING:
    from proxy.admin.context import AdminContext


async def healthz(request: web.Request, mp: AdminContext) -> web.Response:
    """200 whenever the listener answers. The listener opens once events have somewhere to
    go: the store, or in fleet mode the local spool while PostgreSQL is unreachable (then
    /readyz tells the rest)."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request, mp: AdminContext) -> web.Response:
    """200 when meterproxy takes traffic; 503 while it drains for a stop, or while the
    store fails its writes or the event queue refuses more (`storage.on_full`)."""
    if mp.draining:
        return _not_ready("draining", "meterproxy is stopping")
    if mp.writer.failing or not mp.writer.accepting():
        return _not_ready("store_rejecting", "the store does not take writes now")
    return json_response({"status": "ready"})


def _not_ready(code: str, message: str) -> web.Response:
    # The status for probes that read one word; the error for clients of the JSON API.
    return json_response(
        {"status": code, "error": {"code": code, "message": message}}, status=503
    )


async def metrics(request: web.Request, mp: AdminContext) -> web.StreamResponse:
    """The registry in the Prometheus text format (OpenMetrics when asked), after the
    open-period usage is refreshed from the store (collectors cannot await)."""
    await mp.usage_metrics.refresh()
    return await make_aiohttp_handler(mp.registry)(request)
