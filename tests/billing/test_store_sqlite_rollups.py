"""Rollup rows of the SQLite store only for sealed days: which rows exist after which stamps,
late events into sealed days, the seal's own transaction, and the migration of a file whose
every day had a rollup row (billing/store/sqlite.py, sqlite_write.py, migration 0003)."""

from __future__ import annotations

import logging
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from billing.meters import quantity
from billing.store.base import NOTHING_SEALED, SEAL_LAG_MS, ReadPlan, plan_read, sealed_until
from tests.billing.test_store_sqlite import opened, rows
from tests.store.factories import BUCKET, DAY, METERS, event

SUM_ROWS = ("SELECT bucket_start_ms, size_ms, count, value FROM meter_aggregates"
            " WHERE meter = 'tokens_sum' ORDER BY 1, 2")


def sealing(day: int) -> int:
    """An append stamp by which the days before `day` are sealed."""
    return SEAL_LAG_MS + day * DAY


def rollups(path: Path) -> dict[int, tuple[int, str]]:
    """Day -> (count, value) of the tokens_sum rollup rows."""
    found = rows(path, f"SELECT bucket_start_ms, count, value FROM meter_aggregates"
                       f" WHERE meter = 'tokens_sum' AND size_ms = {DAY}")
    return {start // DAY: (count, value) for start, count, value in found}


def marks(path: Path) -> dict[str, int]:
    """Meter -> rollups_until."""
    return dict(rows(path, "SELECT meter, rollups_until FROM meter_state"))


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [(SEAL_LAG_MS - 1, -DAY), (SEAL_LAG_MS, 0), (SEAL_LAG_MS + DAY - 1, 0),
     (sealing(3), 3 * DAY), (sealing(-5) - 1, -6 * DAY)],
)
def test_a_day_is_sealed_seal_lag_after_it_ends(stamp: int, expected: int) -> None:
    assert sealed_until(stamp, BUCKET) == expected


@pytest.mark.parametrize(
    ("start", "end", "sealed", "expected"),
    [
        (0, 3 * DAY, None, ReadPlan((), (0, 3 * DAY), (0, 3 * DAY))),
        (0, 3 * DAY, 2 * DAY, ReadPlan((), (0, 3 * DAY), (0, 2 * DAY))),
        (0, 3 * DAY, 5 * DAY, ReadPlan((), (0, 3 * DAY), (0, 3 * DAY))),
        (0, 3 * DAY, 0, ReadPlan((), (0, 3 * DAY), None)),
        (0, 3 * DAY, NOTHING_SEALED, ReadPlan((), (0, 3 * DAY), None)),
        (500, 2 * DAY + 2500, DAY,
         ReadPlan(((500, 1000), (2 * DAY + 2000, 2 * DAY + 2500)), (1000, 2 * DAY + 2000),
                  None)),
        (500, 2 * DAY + 2500, 2 * DAY,
         ReadPlan(((500, 1000), (2 * DAY + 2000, 2 * DAY + 2500)), (1000, 2 * DAY + 2000),
                  (DAY, 2 * DAY))),
        (500, 2500, DAY, ReadPlan(((500, 1000), (2000, 2500)), (1000, 2000), None)),
    ],
)
def test_reads_take_rollups_only_of_sealed_days(
    start: int, end: int, sealed: int | None, expected: ReadPlan
) -> None:
    assert plan_read(start, end, BUCKET, sealed) == expected


async def test_only_days_that_ended_long_enough_ago_have_rollup_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = await opened(path)
    try:
        await store.append([event(f"d{day}", ts=day * DAY + 5, n=1) for day in range(3)], 1)
        await store.append([event("again", ts=DAY + 6, n=2)], sealing(1) - 1)
        assert rollups(path) == {}  # the hot path writes bucket rows only
        await store.append([event("more", ts=5, n=1)], sealing(2))  # days 0 and 1 end
        assert rollups(path) == {0: (2, "2"), 1: (2, "3")}
        assert set(marks(path).values()) == {2 * DAY}
        await store.append([event("late", ts=DAY + 7, n=4)], sealing(2) + 1)  # into day 1
        assert rollups(path) == {0: (2, "2"), 1: (3, "7")}  # the late event reached it too
        agg = await store.meter_aggregate("tokens_sum", "c1", 0, 3 * DAY)
        assert agg is not None and (agg.count, agg.value) == (6, Decimal(10))
        by_customer = await store.meter_quantities_by_customer("tokens_sum", 0, 3 * DAY)
        assert quantity("sum", by_customer["c1"]) == 10
    finally:
        await store.close()


async def test_a_day_is_read_from_its_rollup_once_sealed_and_its_buckets_before(
    tmp_path: Path,
) -> None:
    path = tmp_path / "r.db"
    store = await opened(path)
    try:
        await store.append([event(f"h{h}", ts=h * BUCKET, n=1) for h in range(2 * 24)], 1)
        with sqlite3.connect(path) as conn:  # a stray rollup row of an unsealed day is not read
            conn.execute("INSERT INTO meter_aggregates VALUES ('tokens_sum', 'c1', 0, ?, 1,"
                         " '1000', 0, 0)", (DAY,))
        agg = await store.meter_aggregate("tokens_sum", "c1", 0, 2 * DAY)
        assert agg is not None and agg.value == 48
        with sqlite3.connect(path) as conn:
            conn.execute(f"DELETE FROM meter_aggregates WHERE size_ms = {DAY}")
        await store.append([event("x", ts=5, n=0)], sealing(1))
        with sqlite3.connect(path) as conn:  # day 0's buckets vanish: its rollup is read
            conn.execute(f"DELETE FROM meter_aggregates WHERE size_ms = {BUCKET}"
                         f" AND bucket_start_ms < {DAY}")
        agg = await store.meter_aggregate("tokens_sum", "c1", 0, 2 * DAY)
        assert agg is not None and agg.value == 48
    finally:
        await store.close()


async def test_every_meter_is_sealed_once_in_a_transaction_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = await opened(path)
    try:
        await store.append([event("a", ts=5, n=3), event("b", "c2", "api.call", ts=9)], 1)
        await store.seal(DAY)
        assert set(marks(path).values()) == {DAY}
        before = rows(path, SUM_ROWS)
        await store.seal(DAY)  # sealed already: nothing changes
        assert rows(path, SUM_ROWS) == before == [(0, BUCKET, 1, "3"), (0, DAY, 1, "3")]
        calls = rows(path, f"SELECT count FROM meter_aggregates WHERE meter = 'calls'"
                           f" AND size_ms = {DAY}")
        assert calls == [(1,)]
    finally:
        await store.close()


async def test_a_failed_seal_keeps_the_append_and_is_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "r.db"
    store = await opened(path)
    try:
        await store.append([event("a", ts=5, n=3)], 1)
        with sqlite3.connect(path) as conn:
            conn.execute(f"CREATE TRIGGER no_rollups BEFORE INSERT ON meter_aggregates"
                         f" WHEN NEW.size_ms = {DAY} BEGIN SELECT RAISE(ABORT, 'no room'); END")
        with caplog.at_level(logging.WARNING, logger="billing.store.sqlite"):
            result = await store.append([event("b", ts=6, n=4)], sealing(1))
        assert result.stored == (True,)
        assert "sealing the days before" in caplog.text
        assert rollups(path) == {}
        assert marks(path)["tokens_sum"] == sealed_until(1, BUCKET)  # the first append's
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TRIGGER no_rollups")
        await store.append([event("c", ts=7, n=5)], sealing(1) + 1)
        assert rollups(path) == {0: (3, "12")}
    finally:
        await store.close()


async def test_a_rebuild_keeps_sealed_days_sealed(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = await opened(path)
    try:
        await store.append([event(f"d{d}", ts=d * DAY + 1, n=d + 1) for d in range(3)],
                           sealing(2))
        before = rows(path, SUM_ROWS)
        assert rollups(path) == {0: (1, "1"), 1: (1, "2")}
        await store.rebuild_aggregates()
        assert rows(path, SUM_ROWS) == before
        assert set(marks(path).values()) == {2 * DAY}
    finally:
        await store.close()


async def test_migrating_a_file_whose_every_day_had_a_rollup(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = await opened(path)
    await store.append([event(f"d{d}", ts=d * DAY + 1, n=d + 1) for d in range(4)], sealing(4))
    await store.close()
    sealed_rows = rows(path, SUM_ROWS)
    assert set(rollups(path)) == {0, 1, 2, 3}
    with sqlite3.connect(path) as conn:  # as schema version 2 left it
        conn.execute("ALTER TABLE meter_state DROP COLUMN rollups_until")
        conn.execute("DELETE FROM schema_migrations WHERE version = 3")
    store = await opened(path)
    try:
        assert set(rollups(path)) == {0, 1, 2}  # the latest day may have been open: unsealed
        assert marks(path)["tokens_sum"] == 3 * DAY
        assert marks(path)["calls"] == NOTHING_SEALED  # no rollup row at all: none sealed
        agg = await store.meter_aggregate("tokens_sum", "c1", 0, 4 * DAY)
        assert agg is not None and agg.value == 10
        await store.append([event("next", ts=4 * DAY + 5, n=0)], sealing(4))
        assert [r for r in rows(path, SUM_ROWS) if r[0] < 4 * DAY] == sealed_rows
    finally:
        await store.close()


async def test_every_meter_of_the_reference_kind_seals(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    store = await opened(path)
    try:
        await store.append([event("a", ts=5, n=2), event("b", ts=7, n=1),
                            event("c", "c1", "api.call", ts=8, tier="pro")], sealing(1))
        found = rows(path, f"SELECT meter, count, value FROM meter_aggregates"
                           f" WHERE size_ms = {DAY} ORDER BY 1")
        assert found == [("calls", 1, "1"), ("pro_calls", 1, "1"), ("tokens_last", 2, "1"),
                         ("tokens_max", 2, "2"), ("tokens_sum", 2, "3")]
        assert len(METERS) == len(found)
    finally:
        await store.close()
