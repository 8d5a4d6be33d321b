"""Logging: human text by default, one JSON object per line for log shippers.

Context travels as `extra=` fields (rule, customer, event_id, ...): the JSON formatter
writes them as keys, the text formatter appends them as `key=value`. Nothing here ever
receives a request's headers or query string, so no key or token can reach a log line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Any, Literal

# LogRecord attributes that are not user-supplied context.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

access_log = logging.getLogger("meterproxy.access")


def context(record: logging.LogRecord) -> dict[str, Any]:
    """The record's `extra=` fields, in the order they were given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, then the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(context(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`; a traceback, if any, follows."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = context(record)
        if not fields:
            return line
        return line + " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items())


def _text(value: object) -> str:
    """A context value as one token: quoted when it holds spaces (or is empty)."""
    text = "-" if value is None else str(value)
    return json.dumps(text) if not text or " " in text or '"' in text else text


def current_format() -> Literal["text", "json"]:
    """The format `setup_logging` gave the root logger ("text" unless it chose JSON)."""
    handlers = logging.getLogger().handlers
    json_lines = bool(handlers) and isinstance(handlers[0].formatter, JsonFormatter)
    return "json" if json_lines else "text"


def setup_logging(fmt: str, level: int = logging.INFO) -> None:
    """Send every log record to stderr as `fmt` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log carries the query string (which may hold secrets);
    # meterproxy writes its own (proxy.access_log) through `log_access`.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log_access(
    method: str,
    path: str,
    status: int | None,
    bytes_sent: int,
    duration_s: float,
    customer: str | None,
) -> None:
    """One access-log line for a finished exchange.

    `path` must come without its query string: a query may carry keys or tokens.
    `status` None means the exchange ended before any status was sent.
    """
    # The fields are the line: the text formatter shows them as key=value, JSON as keys.
    access_log.info(
        "exchange",
        extra={
            "method": method,
            "path": path,
            "status": status,
            "bytes": bytes_sent,
            "duration_ms": round(duration_s * 1000, 3),
            "customer": customer,
        },
    )


class FirstTime:
    """Remembers which keys were seen, so a recurring problem is logged loudly once.

    Holds at most `limit` keys; once full, `first` answers False for unseen keys too,
    so a stream of distinct keys cannot grow memory.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._seen: set[Hashable] = set()
        self._limit = limit

    def first(self, key: Hashable) -> bool:
        """True the first time `key` is asked about (while there is room), else False."""
        if key in self._seen or len(self._seen) >= self._limit:
            return False
        self._seen.add(key)
        return True
