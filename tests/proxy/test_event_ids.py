"""Proxy event ids (billing/events.py `new_proxy_event_id`): RFC 9562 UUIDv7 text, time-ordered and
unique within the process, also past 4096 ids in one millisecond."""

from __future__ import annotations

import re
import time
import uuid

import pytest

import billing.events
from billing.events import PROXY_ID_PREFIX, _Uuid7, new_proxy_event_id

TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_an_id_is_a_uuid7_with_the_time_in_its_first_48_bits() -> None:
    before = billing.events.now_ms()
    text = new_proxy_event_id()
    after = billing.events.now_ms()
    assert text.startswith(PROXY_ID_PREFIX)
    value = uuid.UUID(text.removeprefix(PROXY_ID_PREFIX))
    assert TEXT.fullmatch(str(value)) and str(value) == text.removeprefix(PROXY_ID_PREFIX)
    assert (value.version, value.variant) == (7, uuid.RFC_4122)
    assert before <= value.int >> 80 <= after


def test_ids_are_unique_and_sorted_across_many_pool_refills() -> None:
    make = _Uuid7().next
    ids = [make() for _ in range(20_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(TEXT.fullmatch(i) for i in ids)


def test_a_busy_millisecond_borrows_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    ms = 1_764_000_000_000
    monkeypatch.setattr(time, "time_ns", lambda: ms * 1_000_000 + 7)
    make = _Uuid7().next
    ids = [uuid.UUID(make()) for _ in range(4097)]
    assert [i.int >> 80 for i in (ids[0], ids[4095], ids[4096])] == [ms, ms, ms + 1]
    assert [(i.int >> 64) & 0xFFF for i in (ids[0], ids[4095], ids[4096])] == [0, 4095, 0]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # the clock catching up does not go back below the borrowed millisecond
    assert uuid.UUID(make()).int >> 80 == ms + 1


def test_random_bits_vary() -> None:
    make = _Uuid7().next
    tails = {make()[-12:] for _ in range(1000)}
    assert len(tails) == 1000
    assert {make()[19] for _ in range(400)} == set("89ab")
