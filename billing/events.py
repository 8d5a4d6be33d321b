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


# The first hex digit of a UUID's variant field: 0b10 then two random bits.
_VARIANT_DIGIT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
# Random hex digits fetched at once: 1,024 ids per os.urandom call, which releases the
# GIL (an event-loop thread that lets go of it may wait a switch interval to get it back).
_POOL_BYTES = 8192


class _Uuid7:
    """Time-ordered UUIDv7 strings; monotonic within a process even within one ms.

    Layout: 48 bits of ms, version 7, a 12-bit counter within the ms, variant 0b10 and
    62 random bits. The text is assembled from cached pieces (the ms part changes once a
    millisecond; random hex digits come from a pool), not from a 128-bit integer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0
        self._head = ""  # "tttttttt-tttt-7" of _last_ms
        self._pool = ""  # random hex digits, 16 per id
        self._used = 0
        os.register_at_fork(after_in_child=self._forget_pool)

    def _forget_pool(self) -> None:
        self._pool, self._used = "", 0

    def __call__(self) -> str:
        ms = time.time_ns() // 1_000_000
        with self._lock:
            if ms > self._last_ms:
                self._set_ms(ms)
            else:
                self._counter += 1
                if self._counter > 0xFFF:  # 4096 ids in one ms: borrow the next ms
                    self._set_ms(self._last_ms + 1)
            used = self._used
            if used == len(self._pool):
                self._pool, used = os.urandom(_POOL_BYTES).hex(), 0
            self._used = used + 16
            r = self._pool[used : used + 16]
            return f"{self._head}{self._counter:03x}-{_VARIANT_DIGIT[r[0]]}{r[1:4]}-{r[4:]}"

    def _set_ms(self, ms: int) -> None:
        self._last_ms, self._counter = ms, 0
        h = f"{ms:012x}"
        self._head = f"{h[:8]}-{h[8:]}-7"


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
