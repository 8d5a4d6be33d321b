"""JSON responses whose Decimals stay exact numbers (never floats, never strings)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from aiohttp import web

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps(value: Any) -> str:
    """Encode JSON; a Decimal is written as its exact number text."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_encode(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return _encode(value)


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=dumps(value), content_type="application/json", charset="utf-8"
    )
