"""The admin application: routes, bearer-token auth and JSON errors for everything."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from billing.ingest import MAX_BODY_BYTES
from billing.store.base import StoreError
from proxy.admin import billing, customers, events
from proxy.admin.jsonout import json_response
from proxy.admin.params import ApiError
from proxy.errors import error_response

if TYPE_CHECKING:
    from proxy.app import MeterProxy

log = logging.getLogger("meterproxy.admin")

Handler = Callable[[web.Request, "MeterProxy"], Awaitable[web.StreamResponse]]
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
INGEST = ("POST", "/events/ingest")

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def _bind(
    mp: MeterProxy, handler: Handler
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def bound(request: web.Request) -> web.StreamResponse:
        return await handler(request, mp)

    return bound


def _authorized(request: web.Request, mp: MeterProxy) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    given = token.strip().encode()
    admin = mp.config.admin
    if hmac.compare_digest(given, admin.token.encode()):
        return True
    is_ingest = (request.method, request.path) == INGEST
    return (
        bool(admin.ingest_token)
        and is_ingest
        and hmac.compare_digest(given, admin.ingest_token.encode())
    )


def _middlewares(mp: MeterProxy) -> list[Any]:
    @web.middleware
    async def json_errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, str(exc), **exc.extra)
        except StoreError as exc:
            log.error("admin %s %s: the store failed: %s", request.method, request.path, exc)
            return error_response(503, "store_unavailable", "the store cannot answer now")
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _HTTP_CODES.get(exc.status, "http_error")
            return error_response(exc.status, code, exc.reason, headers=_allow(exc))

    @web.middleware
    async def auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS and not _authorized(request, mp):
            return error_response(
                401,
                "unauthorized",
                "a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return [json_errors, auth]


def _allow(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None


def build_admin_app(mp: MeterProxy) -> web.Application:
    app = web.Application(middlewares=_middlewares(mp), client_max_size=MAX_BODY_BYTES)
    _health_routes(app, mp)
    routes: list[tuple[str, str, Handler]] = [
        ("POST", "/events/ingest", events.ingest),
        ("GET", "/events", events.list_events),
        ("GET", "/events/{event_id}", events.get_event),
        ("GET", "/v1/meters", list_meters),
        ("GET", "/v1/customers", customers.list_customers),
        ("GET", "/v1/customers/{customer_id}", customers.get_customer),
        ("PUT", "/v1/customers/{customer_id}", customers.put_customer),
        ("POST", "/v1/customers/{customer_id}/keys", customers.create_key),
        ("GET", "/v1/customers/{customer_id}/keys", customers.list_keys),
        ("DELETE", "/v1/customers/{customer_id}/keys/{key_id}", customers.revoke_key),
        ("DELETE", "/v1/customers/{customer_id}", customers.delete_customer),
        ("GET", "/v1/customers/{customer_id}/usage", billing.usage),
        ("POST", "/v1/customers/{customer_id}/credits", billing.grant_credits),
        ("GET", "/v1/customers/{customer_id}/credits", billing.list_credits),
        ("POST", "/v1/customers/{customer_id}/adjustments", billing.add_adjustment),
        ("GET", "/v1/customers/{customer_id}/adjustments", billing.list_adjustments),
        ("GET", "/v1/statements", billing.list_statements),
        ("GET", "/v1/statements/{statement_id}", billing.get_statement),
        ("POST", "/v1/billing/run", billing.run_billing),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _bind(mp, handler))
    return app


def build_metrics_app(mp: MeterProxy) -> web.Application:
    """The optional metrics-only listener: /metrics and /healthz, nothing else."""
    app = web.Application(middlewares=_middlewares(mp)[:1])
    _health_routes(app, mp, readiness=False)
    return app


def _health_routes(app: web.Application, mp: MeterProxy, readiness: bool = True) -> None:
    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if mp.draining:
            return json_response({"status": "draining"}, status=503)
        if not mp.writer.accepting():
            return json_response({"status": "store_rejecting"}, status=503)
        return json_response({"status": "ready"})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", _metrics_handler(mp))
    if readiness:
        app.router.add_get("/readyz", readyz)


def _metrics_handler(mp: MeterProxy) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """/metrics: refresh the open-period usage from the store first (awaited here: the
    collectors run synchronously inside the event loop), then render the registry."""
    render = make_aiohttp_handler(mp.registry)

    async def metrics(request: web.Request) -> web.StreamResponse:
        await mp.usage_metrics.refresh()
        return await render(request)

    return metrics


async def list_meters(request: web.Request, mp: MeterProxy) -> web.Response:
    return json_response({"items": [m.to_json() for m in mp.config.meters]})
