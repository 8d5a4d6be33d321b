"""Request parsing for the admin API; every problem becomes an `ApiError` (JSON, stable code)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from aiohttp import web

from billing.events import parse_timestamp
from rules.identify import valid_customer_id

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 10


class ApiError(Exception):
    """An error answered as `{"error": {"code", "message", ...}}` with `status`."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra


def bad_request(message: str, code: str = "invalid_request", **extra: Any) -> ApiError:
    return ApiError(400, code, message, **extra)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def page(request: web.Request) -> tuple[int, int]:
    """(limit, offset) from page_size (default 10, max 100) and page_number (from 0)."""
    size = _int_param(request, "page_size", DEFAULT_PAGE_SIZE)
    number = _int_param(request, "page_number", 0)
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise bad_request(f"page_size must be 1 to {MAX_PAGE_SIZE}")
    if number < 0:
        raise bad_request("page_number must be 0 or more")
    return size, size * number


def _int_param(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise bad_request(f"{name} must be an integer, got {text!r}") from None


def time_param(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if not text:
        return None
    try:
        return parse_timestamp(text)
    except ValueError:
        raise bad_request(f"{name} must be an ISO-8601 date-time, got {text!r}") from None


def customer_id(request: web.Request) -> str:
    value = request.match_info["customer_id"]
    if not valid_customer_id(value):
        raise bad_request("customer ids are 1-128 characters of A-Z a-z 0-9 . _ : @ -")
    return value


async def json_body(request: web.Request, required: bool = True) -> dict[str, Any]:
    """The request's JSON object body; `{}` when empty and not required."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise bad_request("a JSON object body is required")
        return {}
    try:
        value = json.loads(raw, parse_float=Decimal)
    except (ValueError, RecursionError):
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad_request("the body must be a JSON object")
    return value
