"""billing/store/sqlite_write.py: aggregate rows merged by SQLite (integers in SQL, other
decimals through the exact functions) hold exactly what `fold` gives, digit for digit, for any
batching, rollup rows of sealed days included (late events too); the customers an append
skips inserting are only those already stored."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import tempfile
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing.events import MetadataValue, StoredEvent, UsageEvent
from billing.meters import Aggregate, Meter, fold
from billing.store.base import (
    NOTHING_SEALED,
    ROLLUP_BUCKETS,
    SEAL_LAG_MS,
    StoreError,
    bucket_start,
    sealed_until,
)
from tests.billing.test_store_sqlite import opened, rows
from tests.store.factories import BUCKET, DAY, METERS, event

# Integers at the 62- and 64-bit edges of SQLite's integer arithmetic, negative zero,
# exponent forms and equal numbers with different digits.
amounts: st.SearchStrategy[MetadataValue] = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([10**18 - 1, -(10**18) + 1, 2**62 - 1, 4 * 10**17]),
    st.sampled_from([Decimal("2.0"), Decimal("2"), Decimal("-0"), Decimal("1E+3"),
                     Decimal("0.10"), Decimal("-999999999999999999.5")]),
    st.sampled_from(["-0", "7", "2.0", "1e2"]),
)


@st.composite
def amount_events(draw: st.DrawFn) -> UsageEvent:
    return UsageEvent(
        f"e{draw(st.integers(0, 40))}",
        draw(st.sampled_from(["c1", "c2"])),
        draw(st.sampled_from(["tokens", "api.call"])),
        draw(st.integers(0, DAY + 2 * BUCKET)),
        {"n": draw(amounts), "tier": "pro"},
    )


def expected_rows(
    versions: Sequence[UsageEvent], stored: Sequence[StoredEvent], sealed: int
) -> list[tuple[Any, ...]]:
    """Every bucket row, and the rollup row of every day before `sealed`, computed with
    `fold` over the stored events in seq order, each as the first of `versions` with its id."""
    firsts = {e.event_id: e for e in reversed(versions)}
    spans: dict[tuple[str, str, int, int], Aggregate] = {}
    for s in sorted(stored, key=lambda s: s.seq):
        e = firsts[s.event.event_id]
        for m in METERS:
            value = m.read(e.metadata) if m.event_name == e.event_name else None
            if not isinstance(value, Decimal):
                continue
            for size in (BUCKET, BUCKET * ROLLUP_BUCKETS):
                start = bucket_start(e.timestamp_ms, size)
                if size == BUCKET or start < sealed:
                    key = (m.name, e.customer_id, start, size)
                    spans[key] = fold(m.aggregation, spans.get(key), value, e.timestamp_ms,
                                      s.seq)
    return sorted((*key, agg.count, str(agg.value), agg.last_ts, agg.last_seq)
                  for key, agg in spans.items())


def stored_rows(path: Path) -> list[tuple[Any, ...]]:
    return rows(path, "SELECT meter, customer_id, bucket_start_ms, size_ms, count, value,"
                      " last_ts_ms, last_seq FROM meter_aggregates ORDER BY 1, 2, 3, 4")


def numerically(found: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [(*row[:5], Decimal(row[5]), *row[6:]) for row in found]


async def check_rows(path: Path, batches: list[list[UsageEvent]]) -> None:
    """Append the batches, the i-th stamped so that the days before day i - 1 are sealed
    (later batches bring late events to sealed days), then compare every row with `fold`."""
    store = await opened(path)
    try:
        sealed = NOTHING_SEALED
        for i, batch in enumerate(batches):
            stamp = SEAL_LAG_MS + (i - 1) * DAY
            if any((await store.append(batch, now_ms=stamp)).stored):
                sealed = max(sealed, sealed_until(stamp, BUCKET))
        appended = [e for batch in batches for e in batch]
        stored = await store.list_events(limit=1000)
        expected = expected_rows(appended, stored, sealed)
        assert stored_rows(path) == expected
        await store.rebuild_aggregates()
        # A rebuild reads the raw metadata, which keeps every digit but the sign of a zero
        # (JSON's -0 reads back as the int 0): equal numbers, and the digits of what it read.
        assert stored_rows(path) == expected_rows([s.event for s in stored], stored, sealed)
        assert numerically(stored_rows(path)) == numerically(expected)
    finally:
        await store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(amount_events(), max_size=30), cuts=st.lists(st.integers(0, 30)))
# sums past 2^62 and 2^63 in one row, merged across appends
@example(events=[event(f"e{i}", n=10**18 - 1) for i in range(12)], cuts=list(range(12)))
# -0 then 0: the max keeps 0, the sum 0; 2.0 and 2 tie as maxima
@example(events=[event("a", n=Decimal("-0")), event("b", n=0), event("c", n=Decimal("2.0")),
                 event("d", n=2)], cuts=[1, 2, 3])
def test_rows_hold_the_fold_of_their_events_for_any_batching(
    events: list[UsageEvent], cuts: list[int]
) -> None:
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    batches = [events[a:b] for a, b in itertools.pairwise(bounds)]
    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(check_rows(Path(workdir) / "w.db", batches))


async def test_a_customer_of_a_failed_append_is_created_by_the_next(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    store = await opened(path, (Meter("calls", "api.call", "count"),))
    try:
        await store.append([event("a", "known", "api.call", ts=5)], now_ms=10)
        with sqlite3.connect(path) as conn:  # every aggregate write fails, as a full disk would
            conn.execute("CREATE TRIGGER full BEFORE INSERT ON meter_aggregates"
                         " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
        batch = [event("b", "new", "api.call", ts=7), event("c", "known", "api.call", ts=8)]
        with pytest.raises(StoreError, match="full"):
            await store.append(batch, now_ms=20)
        assert await store.get_customer("new") is None
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TRIGGER full")
        assert (await store.append(batch, now_ms=30)).stored == (True, True)
        created = {c.customer_id: c.created_at_ms for c in await store.list_customers(10)}
        assert created == {"known": 5, "new": 7}
    finally:
        await store.close()


async def test_customers_are_created_once_across_appends(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    store = await opened(path)
    try:
        for i in range(3):
            await store.append([event(f"e{i}-{c}", f"c{c}", ts=100 - i) for c in range(3)],
                               now_ms=1000 + i)
        created = {c.customer_id: c.created_at_ms for c in await store.list_customers(10)}
        assert created == {"c0": 100, "c1": 100, "c2": 100}  # a customer's first append
    finally:
        await store.close()
