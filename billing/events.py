"""The usage event: what every exchange and every ingested record becomes.

Metadata is a flat map of str, int, Decimal and bool (never float: numbers are
exact). Timestamps are integer milliseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

MetadataValue = str | int | Decimal | bool
Metadata = Mapping[str, MetadataValue]
Source = Literal["proxy", "api"]

PROXY_ID_PREFIX = "mp_"


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """One usage event as built by a rule or accepted by the ingest API."""

    event_id: str
    customer_id: str
    event_name: str
    timestamp_ms: int
    metadata: Metadata
    source: Source = "api"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back from the store: `seq` orders ingestion store-wide."""

    event: UsageEvent
    seq: int
    ingested_at_ms: int = field(default=0)


# ------------------------------------------------------------------ event ids


class _Uuid7:
    """Time-ordered UUIDv7 strings; monotonic within a process even within one ms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0
        self._pool = b""
        self._used = 0
        os.register_at_fork(after_in_child=self._forget_pool)

    def _forget_pool(self) -> None:
        self._pool, self._used = b"", 0

    def __call__(self) -> str:
        ms = time.time_ns() // 1_000_000
        with self._lock:
            if ms <= self._last_ms:
                ms = self._last_ms
                self._counter += 1
                if self._counter > 0xFFF:  # 4096 ids in one ms: borrow the next ms
                    ms += 1
                    self._counter = 0
            else:
                self._counter = 0
            self._last_ms = ms
            counter = self._counter
            if self._used == len(self._pool):
                self._pool, self._used = os.urandom(4096), 0
            raw = self._pool[self._used : self._used + 8]
            self._used += 8
        rand = int.from_bytes(raw, "big") & 0x3FFF_FFFF_FFFF_FFFF
        value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


uuid7 = _Uuid7()


def new_proxy_event_id() -> str:
    return PROXY_ID_PREFIX + uuid7()


# ----------------------------------------------------------------- timestamps


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def format_timestamp(ms: int) -> str:
    """ISO-8601 in UTC with milliseconds and a Z suffix."""
    dt = _EPOCH + timedelta(milliseconds=ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_timestamp(text: str) -> int:
    """Parse ISO-8601 into ms; no offset means UTC; sub-ms digits are truncated.

    Raises ValueError on anything that is not an ISO-8601 date-time.
    """
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
