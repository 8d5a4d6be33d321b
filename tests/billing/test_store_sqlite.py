"""What is SQLite's own in billing/store/sqlite.py (WAL, exact metadata, aligned bounds) and
the engine-neutral helpers of base.py, on real SQLite files. The `Store` contract itself
runs on SQLite and PostgreSQL alike in tests/store/test_store_contract.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from billing.events import MetadataValue
from billing.meters import Meter
from billing.store.base import (
    PeriodSplit,
    ReadPlan,
    Store,
    decode_metadata,
    encode_metadata,
    plan_read,
    split_period,
)
from billing.store.sqlite import SqliteStore
from billing.store.sqlite_write import WATERMARK
from tests.store.factories import BUCKET, DAY, METERS, event


async def opened(path: Path, meters: Sequence[Meter] = METERS, bucket_ms: int = BUCKET,
                 now: int = 1) -> SqliteStore:
    store = SqliteStore(str(path), meters, bucket_ms, clock=lambda: now)
    await store.open()
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await opened(tmp_path / "events.db")
    yield s
    await s.close()


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the file through a separate plain sqlite3 connection."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_the_sqlite_engine_implements_the_store_interface(tmp_path: Path) -> None:
    store: Store = SqliteStore(str(tmp_path / "s.db"), METERS, BUCKET)  # mypy: structurally
    assert isinstance(store, Store)  # and at run time: every method is there


# ----------------------------------------------------------------- migrations


async def test_the_file_is_wal_and_reads_do_not_wait_for_a_writer(
    store: SqliteStore, tmp_path: Path
) -> None:
    await store.ensure_customer("visible", now_ms=1)
    path = tmp_path / "events.db"
    assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO customers (id, created_at_ms) VALUES ('uncommitted', 1)")
        assert await asyncio.wait_for(store.get_customer("visible"), 5) is not None
        assert await store.get_customer("uncommitted") is None
    finally:
        other.execute("ROLLBACK")
        other.close()


# ---------------------------------------------------------- append and dedup


# ------------------------------------------------------------------ reading


async def test_the_watermark_is_one_seek_without_an_ingested_at_index(tmp_path: Path) -> None:
    store = await opened(tmp_path / "w.db")
    try:
        assert await store.watermark() == 0
        for i, now in enumerate([100, 100, 50, 200]):  # stamps: 100, 101, 102, 200
            await store.append([event(f"e{i}")], now)
        assert await store.watermark() == 200
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "w.db") as conn:
        indexes = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'")}
        plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {WATERMARK}"))
    assert "events_by_ingested_at" not in indexes  # migration 0004: appends skip it
    assert "SCAN events" not in plan and "INTEGER PRIMARY KEY" in plan, plan


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"s": "text", "empty": ""},
        {"yes": True, "no": False},
        {"i": -12, "big": 10**17},
        {"d": Decimal("0.1"), "e": Decimal("1E+3"), "neg": Decimal("-0.50")},
        {"exact": Decimal("123456789012345678.123456789012")},
        {"unicode": "héllo ✓", "quotes": 'a "b" \\ c', "key with spaces": 1},
    ],
)
def test_metadata_round_trips_exactly(metadata: dict[str, MetadataValue]) -> None:
    decoded = decode_metadata(encode_metadata(metadata))
    assert decoded == metadata
    assert [(type(v), str(v)) for v in decoded.values()] == [
        (type(v), str(v)) for v in metadata.values()
    ]


def test_an_integral_decimal_comes_back_as_an_equal_int() -> None:
    assert decode_metadata(encode_metadata({"n": Decimal("5")})) == {"n": 5}


# ------------------------------------------------------------------ periods


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, 3000, PeriodSplit((0, 3000), ())),
        (500, 3000, PeriodSplit((1000, 3000), ((500, 1000),))),
        (0, 2500, PeriodSplit((0, 2000), ((2000, 2500),))),
        (500, 2500, PeriodSplit((1000, 2000), ((500, 1000), (2000, 2500)))),
        (200, 800, PeriodSplit(None, ((200, 800),))),
        (500, 1500, PeriodSplit(None, ((500, 1500),))),
        (-1500, -500, PeriodSplit(None, ((-1500, -500),))),
        (-2000, 0, PeriodSplit((-2000, 0), ())),
        (700, 700, PeriodSplit(None, ())),
    ],
)
def test_split_period(start: int, end: int, expected: PeriodSplit) -> None:
    assert split_period(start, end, BUCKET) == expected


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, 3 * DAY, ReadPlan((), (0, 3 * DAY), (0, 3 * DAY))),
        (500, 2 * DAY + 2500, ReadPlan(((500, 1000), (2 * DAY + 2000, 2 * DAY + 2500)),
                                       (1000, 2 * DAY + 2000), (DAY, 2 * DAY))),
        (1000, DAY + 1000, ReadPlan((), (1000, DAY + 1000), None)),
        (500, 2500, ReadPlan(((500, 1000), (2000, 2500)), (1000, 2000), None)),
        (200, 800, ReadPlan(((200, 800),), None, None)),
        (-DAY, DAY - 1, ReadPlan(((DAY - 1000, DAY - 1),), (-DAY, DAY - 1000), (-DAY, 0))),
    ],
)
def test_plan_read(start: int, end: int, expected: ReadPlan) -> None:
    assert plan_read(start, end, BUCKET) == expected


async def test_quantities_by_customer_need_aligned_bounds(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="aligned"):
        await store.meter_quantities_by_customer("tokens_sum", 1000, 2500)
    with pytest.raises(KeyError):
        await store.meter_quantities_by_customer("nope", 0, 1000)


# ----------------------------------------------------- aggregates vs brute force


numbers: st.SearchStrategy[MetadataValue | None] = st.one_of(
    st.none(),
    st.integers(-50, 50),
    st.decimals(min_value=-100, max_value=100, places=2, allow_nan=False, allow_infinity=False),
    st.sampled_from(["7", "1e2", "abc", True]),
)


# ------------------------------------------------------------------ rebuild


# ------------------------------------------------------------------- reopen


# --------------------------------------------------------------------- keys


