"""Errors meterproxy answers itself, always as `{"error": {"code", "message"}}`.

Hierarchy (translated to HTTP at the edge, never leaking aiohttp.ClientError):
    ProxyError
      UpstreamUnreachable   -> 502 (refused, reset before a response, malformed response)
      UpstreamTimeout       -> 504 (connect or read timeout before a response)
      BodyTooLarge          -> 413
      RequestTimeout        -> 408 (the client stalled while sending its body)
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web


def error_body(code: str, message: str, **extra: object) -> bytes:
    error: dict[str, object] = {"code": code, "message": message, **extra}
    return json.dumps({"error": error}).encode()


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    **extra: object,
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(code, message, **extra),
        content_type="application/json",
        headers=headers,
    )


class ProxyError(Exception):
    status = 502
    code = "bad_gateway"
    reason = "upstream_unreachable"  # metric label

    def response(self) -> web.Response:
        return error_response(self.status, self.code, str(self))


class UpstreamUnreachable(ProxyError):
    pass


class UpstreamTimeout(ProxyError):
    status = 504
    code = "gateway_timeout"
    reason = "upstream_timeout"


class BodyTooLarge(ProxyError):
    status = 413
    code = "request_too_large"
    reason = "body_too_large"


class RequestTimeout(ProxyError):
    status = 408
    code = "request_timeout"
    reason = "client_timeout"
