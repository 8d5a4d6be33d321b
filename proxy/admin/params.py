"""Request parsing for the admin API; every problem becomes an `ApiError` (JSON, stable code)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, TypeVar

from aiohttp import web

from billing.events import parse_timestamp
from billing.ingest import unstorable
from rules.identify import valid_customer_id

T = TypeVar("T")

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_NUMBER = 1_000_000_000  # keeps every offset within SQLite's integers
# Instants the API takes: 1970-01-01 to 9999-01-01 (UTC), so that every period around
# one, and its rendering, stays within what datetime can represent.
MIN_INSTANT_MS = 0
MAX_INSTANT_MS = 253_370_764_800_000


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
    """(limit, offset) from page_size (default 10, max 100) and page_number (from 0).

    Raises ApiError (400) for a value that is not an integer or out of range."""
    size = _int_param(request, "page_size", DEFAULT_PAGE_SIZE)
    number = _int_param(request, "page_number", 0)
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise bad_request(f"page_size must be 1 to {MAX_PAGE_SIZE}")
    if not 0 <= number <= MAX_PAGE_NUMBER:
        raise bad_request(f"page_number must be 0 to {MAX_PAGE_NUMBER}")
    return size, size * number


def page_of(items: list[T], request: web.Request) -> list[T]:
    """The requested page of a list held whole in memory (see `page`)."""
    limit, offset = page(request)
    return items[offset : offset + limit]


def _int_param(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise bad_request(f"{name} must be an integer, got {text!r}") from None


def time_param(request: web.Request, name: str) -> int | None:
    """The query parameter `name` as epoch ms; None when absent or empty.

    Raises ApiError (400) unless it is an ISO-8601 instant in 1970..9999."""
    text = request.query.get(name)
    return None if not text else instant(text, name)


def instant(value: object, name: str) -> int:
    """An ISO-8601 date-time string (no offset: UTC) as epoch ms.

    Raises ApiError (400) for anything else, or an instant outside 1970..9999."""
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        ms = parse_timestamp(value)
    except (ValueError, OverflowError):  # OverflowError: an offset pushing past year 1..9999
        raise bad_request(f"{name} must be an ISO-8601 date-time, got {value!r}") from None
    if not MIN_INSTANT_MS <= ms < MAX_INSTANT_MS:
        raise bad_request(f"{name} must be between 1970-01-01 and 9999-01-01, got {value!r}")
    return ms


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
    if _holds_unstorable_text(value):
        raise bad_request("the body holds text with NUL or a lone surrogate (\\ud800-style)")
    return value


def _holds_unstorable_text(value: Any) -> bool:
    """Strings no store can write would fail deep in the ledger as a 500: refuse them here."""
    if isinstance(value, str):
        return unstorable(value)
    if isinstance(value, dict):
        return any(_holds_unstorable_text(k) or _holds_unstorable_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_unstorable_text(v) for v in value)
    return False
