"""The admin application: the routes of `operations.OPERATIONS`, bearer-token auth as
each one declares, and JSON errors for everything (unknown routes and bugs included)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from billing.ingest import MAX_BODY_BYTES
from billing.store.base import StoreError
from proxy.admin.events import PARSING_TURN
from proxy.admin.openapi import Auth, Handler, Operation
from proxy.admin.operations import OPERATIONS
from proxy.admin.params import ApiError
from proxy.errors import error_response

if TYPE_CHECKING:
    from proxy.admin.context import AdminContext

log = logging.getLogger("meterproxy.admin")

Endpoint = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def build_admin_app(mp: AdminContext) -> web.Application:
    """admin.listen: every operation, each behind the token its `auth` names."""
    auth = {(op.method, op.path): op.auth for op in OPERATIONS}
    app = web.Application(
        middlewares=[json_errors, _auth_middleware(mp, auth)], client_max_size=MAX_BODY_BYTES
    )
    app[PARSING_TURN] = asyncio.Lock()
    _register(app, mp, OPERATIONS)
    return app


def build_metrics_app(mp: AdminContext) -> web.Application:
    """metrics.listen: /metrics and /healthz only (JSON 404 for anything else)."""
    app = web.Application(middlewares=[json_errors])
    _register(app, mp, (op for op in OPERATIONS if op.on_metrics_listener))
    return app


def _register(app: web.Application, mp: AdminContext, operations: Iterable[Operation]) -> None:
    for op in operations:
        app.router.add_route(op.method, op.path, _bind(mp, op.handler))


def _bind(mp: AdminContext, handler: Handler) -> Endpoint:
    async def bound(request: web.Request) -> web.StreamResponse:
        return await handler(request, mp)

    return bound


@web.middleware
async def json_errors(request: web.Request, handler: Endpoint) -> web.StreamResponse:
    """Every error as `{"error": {"code", "message"}}`; a bug is logged and answered 500."""
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
    except Exception:
        log.exception("admin %s %s failed", request.method, request.path)
        return error_response(500, "internal_error", "meterproxy failed to answer; see its log")


def _allow(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None


def _auth_middleware(mp: AdminContext, auth: dict[tuple[str, str], Auth]) -> Any:
    @web.middleware
    async def check_token(request: web.Request, handler: Endpoint) -> web.StreamResponse:
        if not _authorized(request, mp, _auth_of(request, auth)):
            return error_response(
                401,
                "unauthorized",
                "a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return check_token


def _auth_of(request: web.Request, auth: dict[tuple[str, str], Auth]) -> Auth:
    """The matched operation's auth; "admin" for what matches none, so that a caller
    without a token cannot tell which routes exist."""
    resource = request.match_info.route.resource
    if resource is None:
        return "admin"
    return auth.get((request.method, resource.canonical), "admin")


def _authorized(request: web.Request, mp: AdminContext, needed: Auth) -> bool:
    if needed == "none":
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    given = token.strip().encode()
    admin = mp.config.admin  # read per request: SIGHUP may have changed the tokens
    if hmac.compare_digest(given, admin.token.encode()):
        return True
    return (
        needed == "ingest"
        and bool(admin.ingest_token)
        and hmac.compare_digest(given, admin.ingest_token.encode())
    )
