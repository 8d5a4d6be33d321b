"""The `Store` contract, run against every engine (SQLite and PostgreSQL) by the `backend`
fixture: dedup, the watermark, aggregates (exact, and equal to a brute-force recomputation),
partial bucket edges, rebuilds, customers, keys and reopening."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import tempfile
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.events import MetadataValue, StoredEvent, UsageEvent
from billing.meters import Aggregate, Meter, quantity
from billing.store.base import ApiKey, Customer, DuplicateKey, Store, StoreError
from tests.store.backends import ENGINES, Backend, make_backend
from tests.store.factories import BUCKET, DAY, METERS, SEALED, event, meter, opened, sealing

STORE_LOGGERS = ("billing.store.sqlite", "billing.store.postgres", "billing.store.pg_schema")


async def everything(store: Store) -> list[StoredEvent]:
    return await store.list_events(limit=1_000_000)


async def aggregate_rows(backend: Backend, location: str) -> list[tuple[Any, ...]]:
    """Every aggregate row, values as Decimal (equal numbers, whatever their exponent)."""
    found = await backend.rows(
        location, "SELECT meter, customer_id, bucket_start_ms, size_ms, count, value,"
                  " last_ts_ms, last_seq FROM meter_aggregates ORDER BY 1, 2, 3, 4")
    return [(*row[:5], Decimal(str(row[5])), *row[6:]) for row in found]


def test_each_engine_implements_the_store_interface(tmp_path: Path) -> None:
    unopened = {"sqlite": str(tmp_path / "unused.db"), "postgres": "postgresql://db/unused"}
    for engine in ENGINES:
        store: Store = make_backend(engine, tmp_path).store(unopened[engine], METERS, BUCKET, int)
        assert isinstance(store, Store), engine  # every method of the protocol is there


# ----------------------------------------------------------------- migrations


async def test_migrations_run_once_and_are_recorded(
    backend: Backend, location: str, caplog: pytest.LogCaptureFixture
) -> None:
    for name in STORE_LOGGERS:
        caplog.set_level(logging.INFO, logger=name)
    for now in (7, 8):
        await (await opened(backend, location, now=now)).close()
    files = sorted(
        f.name for f in (resources.files("billing.store") / backend.migrations).iterdir()
        if f.name.endswith(".sql")
    )
    assert files
    recorded = await backend.rows(
        location, "SELECT version, name, applied_at_ms FROM schema_migrations ORDER BY version"
    )
    assert recorded == [(int(f[:4]), f[5:-4], 7) for f in files]
    applied = [r for r in caplog.records if "applied schema migration" in r.message]
    assert len(applied) == len(files)


async def test_a_newer_schema_is_refused(backend: Backend, location: str) -> None:
    await (await opened(backend, location)).close()
    await backend.execute(
        location, "INSERT INTO schema_migrations VALUES (9999, 'from_the_future', 0)"
    )
    store = backend.store(location, METERS, BUCKET, int)
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    await store.close()


# ---------------------------------------------------------- append and dedup


async def test_duplicates_inside_a_batch_keep_the_first(store: Store) -> None:
    result = await store.append([event("e1", n=1), event("e1", n=2), event("e2", n=3)], 10)
    assert result.stored == (True, False, True)
    assert result.stored_count == 2
    stored = await store.get_event("e1")
    assert stored is not None and stored.event == event("e1", n=1)
    agg = await store.meter_aggregate("tokens_sum", "c1", 0, BUCKET)
    assert agg is not None and (agg.count, agg.value) == (2, Decimal(4))


async def test_an_event_id_is_deduplicated_forever(backend: Backend, location: str) -> None:
    first = await opened(backend, location)
    assert (await first.append([event("e1", n=1)], 10)).stored == (True,)
    assert (await first.append([event("e1", n=5)], 20)).stored == (False,)
    await first.close()
    again = await opened(backend, location)
    try:
        result = await again.append([event("e1", n=7), event("e2", n=10)], 30)
        assert result.stored == (False, True)
        stored = await again.get_event("e1")
        assert stored is not None and stored.event.metadata == {"n": 1}
        agg = await again.meter_aggregate("tokens_sum", "c1", 0, BUCKET)
        assert agg is not None and (agg.count, agg.value) == (2, Decimal(11))
    finally:
        await again.close()


async def test_a_stored_id_after_new_ones_leaves_no_half_insert(store: Store) -> None:
    # Both engines insert first and probe only when refused: the refusal comes after e2's
    # row went in, which must be undone before the new events are inserted again.
    await store.append([event("e1", n=1)], 10)
    result = await store.append([event("e2", n=2), event("e1", n=5), event("e3", n=3)], 20)
    assert result.stored == (True, False, True)
    agg = await store.meter_aggregate("tokens_sum", "c1", 0, BUCKET)
    assert agg is not None and (agg.count, agg.value) == (3, Decimal(6))
    page = await store.list_events(limit=10)
    assert sorted(s.event.event_id for s in page) == ["e1", "e2", "e3"]


async def test_a_large_batch_half_resent_folds_only_its_new_events(store: Store) -> None:
    # Larger than the PostgreSQL engine's fold slices (overlap.FOLD_SLICE), whose fold of a
    # refused insert must give way to the fold of the new events alone.
    first = [event(f"e{i}", customer=f"c{i % 3}", n=i % 10) for i in range(1_200)]
    assert (await store.append(first, 10)).stored_count == 1_200
    again = first[600:] + [event(f"f{i}", customer=f"c{i % 3}", n=100) for i in range(700)]
    result = await store.append(again, 20)
    assert result.stored == (False,) * 600 + (True,) * 700
    expected = sum(i % 10 for i in range(0, 1_200, 3)) + 100 * len(range(0, 700, 3))
    agg = await store.meter_aggregate("tokens_sum", "c0", 0, BUCKET)
    assert agg is not None and (agg.count, agg.value) == (400 + 234, Decimal(expected))
    assert result.deltas is not None
    assert result.deltas.by_meter["tokens_sum"][("c0", 0)].count == 234


async def test_ingested_at_strictly_increases_and_is_the_watermark(store: Store) -> None:
    assert await store.watermark() == 0
    nows = [100, 100, 50, 200]
    results = [await store.append([event(f"e{i}")], now) for i, now in enumerate(nows)]
    assert [r.watermark for r in results] == [100, 101, 102, 200]
    for i, expected in enumerate([100, 101, 102, 200]):
        stored = await store.get_event(f"e{i}")
        assert stored is not None and stored.ingested_at_ms == expected
    only_duplicates = await store.append([event("e0")], 300)
    assert (only_duplicates.stored, only_duplicates.watermark) == ((False,), 200)
    assert await store.watermark() == 200


async def test_seq_follows_input_order_across_appends(store: Store) -> None:
    await store.append([event("b"), event("a"), event("b")], 1)
    await store.append([event("a"), event("d"), event("c")], 2)
    found = sorted(await everything(store), key=lambda s: s.seq)
    assert [(s.event.event_id, s.seq) for s in found] == [("b", 1), ("a", 2), ("d", 3), ("c", 4)]


async def test_a_failed_append_stores_nothing(store: Store) -> None:
    await store.append([event("before")], 10)
    bad = UsageEvent("bad", "c9", "tokens", 0, {"n": 1}, "elsewhere")  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await store.append([event("ok", customer="c9", n=5), bad], 20)
    assert await store.get_event("ok") is None
    assert await store.get_customer("c9") is None
    assert await store.meter_aggregate("tokens_sum", "c9", 0, BUCKET) is None
    assert await store.watermark() == 10
    assert (await store.append([event("ok", customer="c9", n=5)], 5)).watermark == 11
    stored = await store.get_event("ok")
    assert stored is not None and stored.seq == 2  # the failed append used up no seq


async def test_a_failed_append_that_also_repeats_a_stored_id_stores_nothing(
    store: Store,
) -> None:
    """An engine may try the insert first and look for stored ids only after a refusal (the
    PostgreSQL one does): a refusal that a stored id does not explain is still an error."""
    await store.append([event("before")], 10)
    bad = UsageEvent("bad", "c9", "tokens", 0, {"n": 1}, "elsewhere")  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        await store.append([event("before"), event("ok", customer="c9", n=5), bad], 20)
    assert await store.get_event("ok") is None
    assert await store.get_customer("c9") is None
    assert await store.watermark() == 10


async def test_skipped_events_are_counted_per_meter_and_reason(store: Store) -> None:
    result = await store.append(
        [event("a", n="x"), event("b"), event("c", n=2), event("d", n="x")], 1
    )
    assert result.skipped == {
        (m, reason): count for m in ("tokens_sum", "tokens_max", "tokens_last")
        for reason, count in (("not_numeric", 2), ("missing", 1))
    }
    assert (await store.append([event("a", n="x")], 2)).skipped == {}  # a duplicate: not again


async def test_an_append_reports_the_aggregate_deltas_it_committed(store: Store) -> None:
    first = await store.append([event("a", n=2, ts=10), event("b", "c2", "api.call", ts=1500)], 7)
    second = await store.append([event("c", n=3, ts=20), event("a", n=9)], 9)  # a: stored
    assert first.deltas is not None and second.deltas is not None
    assert (first.deltas.after_ms, first.deltas.stamp_ms) == (0, 7)
    assert (second.deltas.after_ms, second.deltas.stamp_ms) == (7, 9)  # follows the first
    assert second.deltas.bucket_ms == BUCKET
    assert {m: dict(cells) for m, cells in second.deltas.by_meter.items()} == {
        "tokens_sum": {("c1", 0): Aggregate(1, Decimal(3), 20, 3)},
        "tokens_max": {("c1", 0): Aggregate(1, Decimal(3), 20, 3)},
        "tokens_last": {("c1", 0): Aggregate(1, Decimal(3), 20, 3)},
    }
    assert set(first.deltas.by_meter["calls"]) == {("c2", 1000)}
    assert (await store.append([event("a", n=2)], 11)).deltas is None  # nothing stored


async def test_unknown_customers_are_created_from_their_earliest_event(store: Store) -> None:
    await store.ensure_customer("old", now_ms=5)
    await store.append(
        [event("a", "new", ts=900), event("b", "new", ts=700), event("c", "old", ts=1),
         event("d", "future", ts=5000)],
        now_ms=1000,
    )
    assert await store.get_customer("new") == Customer("new", 700, None, None)
    assert await store.get_customer("old") == Customer("old", 5, None, None)
    assert await store.get_customer("future") == Customer("future", 1000, None, None)


async def test_customers_are_listed_by_id_and_plans_are_set(store: Store) -> None:
    for cid in ("b", "c", "a"):
        await store.ensure_customer(cid, now_ms=1)
    assert await store.ensure_customer("a", now_ms=99) == Customer("a", 1, None, None)
    assert await store.set_customer_plan("a", "pro", now_ms=50) == Customer("a", 1, "pro", None)
    assert await store.set_customer_plan("z", "free", now_ms=60) == Customer("z", 60, "free", None)
    assert await store.set_customer_plan("a", None, now_ms=70) == Customer("a", 1, None, None)
    page = await store.list_customers(limit=2, offset=1)
    assert [c.customer_id for c in page] == ["b", "c"]
    assert await store.get_customer("nobody") is None


# ------------------------------------------------------------------ reading


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
async def test_metadata_comes_back_exactly(
    store: Store, metadata: dict[str, MetadataValue]
) -> None:
    await store.append([UsageEvent("m", "c1", "tokens", 0, metadata)], 1)
    stored = await store.get_event("m")
    assert stored is not None
    assert stored.event.metadata == metadata
    assert [(type(v), str(v)) for v in stored.event.metadata.values()] == [
        (type(v), str(v)) for v in metadata.values()
    ]


async def test_list_events_filters_and_orders_newest_first(store: Store) -> None:
    events = [
        event("a", "c1", "tokens", ts=100), event("b", "c1", "api.call", ts=300),
        event("c", "c2", "tokens", ts=200), event("d", "c1", "tokens", ts=300),
        event("e", "c1", "tokens", ts=400), event("f", "c1", "tokens", ts=300),
    ]
    await store.append(events[:3], 1)
    await store.append(events[3:], 2)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({}, ["e", "f", "d", "b", "c", "a"]),
        ({"customer_id": "c1"}, ["e", "f", "d", "b", "a"]),
        ({"customer_id": "c1", "event_names": ["tokens"]}, ["e", "f", "d", "a"]),
        ({"event_names": ["tokens", "api.call"], "start_ms": 200, "end_ms": 400},
         ["f", "d", "b", "c"]),
        ({"event_names": []}, []),
        ({"customer_id": "c1", "limit": 2, "offset": 1}, ["f", "d"]),
        ({"customer_id": "nobody"}, []),
    ]
    for query, expected in cases:
        query = {"limit": 100} | query
        found = await store.list_events(**query)
        assert [s.event.event_id for s in found] == expected, query


async def test_get_event_returns_the_stored_event(store: Store) -> None:
    e = event("mp_x", "c1", "api.call", ts=1234, source="proxy", method="GET", d=Decimal("2.50"))
    await store.append([e], now_ms=5000)
    assert await store.get_event("mp_x") == StoredEvent(e, 1, 5000)
    assert await store.get_event("missing") is None


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [(0, 4 * DAY, "1999999999999999998.900000000000"),
     (1, 4 * DAY - 1, "999999999999999999.776543210988"),
     (0, DAY + 1, "999999999999999999.123456789013")],
)
async def test_sums_stay_exact_beyond_float_and_default_decimal_precision(
    store: Store, start: int, end: int, expected: str
) -> None:
    # Metadata numbers stay below 10^18; these sums need 31 significant digits.
    values = ["999999999999999999.123456789012", "0.000000000001",
              "999999999999999999.876543210987", "-0.1"]
    await store.append([event(f"e{i}", ts=i * DAY, n=Decimal(v)) for i, v in enumerate(values)],
                       now_ms=1)
    agg = await store.meter_aggregate("tokens_sum", "c1", start, end)
    assert str(quantity("sum", agg)) == expected
    if start % BUCKET == end % BUCKET == 0:
        by_customer = await store.meter_quantities_by_customer("tokens_sum", start, end)
        assert str(quantity("sum", by_customer["c1"])) == expected


# ------------------------------------------------------------------ periods


EDGE_TIMESTAMPS = (-1, 0, 499, 500, 999, 1000, 1500, 1999, 2000, 2499, 2500, 2999, 3000,
                   DAY - 1, DAY, DAY + 1, 2 * DAY - 1, 2 * DAY, 2 * DAY + 500)


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, 3000), (500, 2500), (499, 2501), (1, 2999), (500, 1000), (1000, 2000), (1200, 1300),
     (1500, 1500), (-1000, 4000), (2999, 3001), (2000, 1000), (0, 2 * DAY), (0, 2 * DAY + 1000),
     (1, 2 * DAY + 501), (DAY, 2 * DAY), (DAY - 1, 2 * DAY), (-DAY, 3 * DAY), (1000, 2 * DAY)],
)
@pytest.mark.parametrize("stamp", [1, SEALED])
async def test_a_period_reads_exactly_the_events_inside_it(
    store: Store, start: int, end: int, stamp: int
) -> None:
    # Each event weighs a distinct power of two, so the sum names the exact set read.
    weight = {ts: 2**i for i, ts in enumerate(EDGE_TIMESTAMPS)}
    await store.append([event(f"e{ts}", ts=ts, n=w) for ts, w in weight.items()], now_ms=stamp)
    expected = sum(w for ts, w in weight.items() if start <= ts < end)
    agg = await store.meter_aggregate("tokens_sum", "c1", start, end)
    assert quantity("sum", agg) == expected
    assert (agg is None) == (expected == 0)


SPREAD = [("c1", 100), ("c1", 1100), ("c2", 1900), ("c2", 2100), ("c1", DAY - 1),
          ("c2", DAY + 1000), ("c1", 2 * DAY), ("c2", 3 * DAY - 1), ("c1", -5)]


@pytest.mark.parametrize(
    ("start", "end"),
    [(1000, 3000), (0, 2 * DAY), (1000, 2 * DAY + 1000), (-DAY, 3 * DAY), (DAY, DAY),
     (5000, 6000), (DAY, 3 * DAY)],
)
@pytest.mark.parametrize("stamp", [1, SEALED])
async def test_quantities_by_customer_read_rollups_and_buckets(
    store: Store, start: int, end: int, stamp: int
) -> None:
    await store.append(
        [event(f"e{i}", customer, ts=ts, n=2**i) for i, (customer, ts) in enumerate(SPREAD)],
        stamp,
    )
    expected: Counter[str] = Counter()
    for i, (customer, ts) in enumerate(SPREAD):
        if start <= ts < end:
            expected[customer] += 2**i
    found = await store.meter_quantities_by_customer("tokens_sum", start, end)
    assert {c: quantity("sum", a) for c, a in found.items()} == expected


async def test_whole_rollups_are_read_instead_of_their_buckets(
    backend: Backend, location: str, store: Store
) -> None:
    await store.append([event(f"e{h}", ts=h * BUCKET + 7, n=1) for h in range(3 * 24)], SEALED)
    await backend.execute(  # the bucket rows of day 1 vanish; its rollup row stays
        location, f"DELETE FROM meter_aggregates WHERE size_ms = {BUCKET}"
                  f" AND bucket_start_ms BETWEEN {DAY} AND {2 * DAY - 1}")
    agg = await store.meter_aggregate("tokens_sum", "c1", 1000, 3 * DAY - 1000)
    assert quantity("sum", agg) == 3 * 24 - 2  # days 0 and 2 from buckets, day 1 a rollup
    by_customer = await store.meter_quantities_by_customer("tokens_sum", 1000, 3 * DAY - 1000)
    assert quantity("sum", by_customer["c1"]) == 3 * 24 - 2


async def test_quantities_by_customer_need_aligned_bounds_and_a_known_meter(store: Store) -> None:
    with pytest.raises(ValueError, match="aligned"):
        await store.meter_quantities_by_customer("tokens_sum", 1000, 2500)
    with pytest.raises(KeyError):
        await store.meter_quantities_by_customer("nope", 0, 1000)
    with pytest.raises(KeyError):
        await store.meter_aggregate("nope", "c1", 0, 1000)


async def test_last_follows_timestamp_then_store_order(store: Store) -> None:
    await store.append([event("late", ts=900, n=1), event("early", ts=100, n=2)], 1)
    await store.append([event("tie", ts=900, n=3)], 2)
    agg = await store.meter_aggregate("tokens_last", "c1", 0, 1000)
    assert quantity("last", agg) == 3
    assert quantity("last", await store.meter_aggregate("tokens_last", "c1", 0, 500)) == 2


# ----------------------------------------------------- aggregates vs brute force


def brute_force(
    m: Meter, stored: Sequence[StoredEvent], customer: str, start: int, end: int
) -> tuple[int, Decimal, int, int] | None:
    """(count, quantity, last_ts, last_seq) computed directly from the raw events."""
    values = []
    for s in stored:
        e = s.event
        inside = start <= e.timestamp_ms < end
        if inside and (e.customer_id, e.event_name) == (customer, m.event_name):
            value = m.read(e.metadata)
            if isinstance(value, Decimal):
                values.append((e.timestamp_ms, s.seq, value))
    if not values:
        return None
    last_ts, last_seq, last_value = max(values)
    numbers = [v for _, _, v in values]
    result = {"count": Decimal(len(values)), "sum": sum(numbers, Decimal(0)),
              "max": max(numbers), "last": last_value}[m.aggregation]
    return len(values), result, last_ts, last_seq


def observed(m: Meter, agg: Aggregate | None) -> tuple[int, Decimal, int, int] | None:
    if agg is None:
        return None
    return agg.count, quantity(m.aggregation, agg), agg.last_ts, agg.last_seq


def comparable(m: Meter, found: tuple[int, Decimal, int, int] | None) -> object:
    # Only `last` promises which event is the latest; the others promise count and quantity.
    return found if found is None or m.aggregation == "last" else found[:2]


numbers: st.SearchStrategy[MetadataValue | None] = st.one_of(
    st.none(),
    st.integers(-50, 50),
    st.decimals(min_value=-100, max_value=100, places=2, allow_nan=False, allow_infinity=False),
    st.sampled_from(["7", "1e2", "abc", True]),
)


@st.composite
def usage_events(draw: st.DrawFn) -> UsageEvent:
    n = draw(numbers)
    metadata: dict[str, MetadataValue] = {} if n is None else {"n": n}
    tier = draw(st.sampled_from([None, "pro", "free"]))
    if tier is not None:
        metadata["tier"] = tier
    return UsageEvent(
        draw(st.sampled_from([f"e{i}" for i in range(15)])),
        draw(st.sampled_from(["c1", "c2"])),
        draw(st.sampled_from(["api.call", "tokens"])),
        draw(st.integers(-DAY - 2 * BUCKET, 2 * DAY + 2 * BUCKET)),
        metadata,
    )


def batched(events: list[UsageEvent], cuts: list[int]) -> list[list[UsageEvent]]:
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    return [events[a:b] for a, b in itertools.pairwise(bounds)]


PERIODS = [(-2 * DAY, 3 * DAY), (-DAY, DAY), (-DAY - 1500, DAY + 2500), (0, BUCKET),
           (1200, 1300), (DAY - 1, 2 * DAY + 1)]


async def store_batches(backend: Backend, location: str, batches: list[list[UsageEvent]]) -> Store:
    """A store holding the batches, the i-th stamped so that the days before day i - 1 are
    sealed: on PostgreSQL, later batches bring late events to sealed days."""
    store = await opened(backend, location)
    for i, batch in enumerate(batches):
        await store.append(batch, now_ms=sealing(i - 1))
    return store


async def check_against_brute_force(
    backend: Backend, batches: list[list[UsageEvent]], period: tuple[int, int]
) -> None:
    flat = [e for batch in batches for e in batch]
    where = await backend.location()
    store = await store_batches(backend, where, batches)
    one = await store_batches(backend, await backend.location(), [flat])
    try:
        stored = await everything(store)
        first_versions = {e.event_id: e for e in reversed(flat)}
        assert {s.event.event_id: s.event for s in stored} == first_versions
        for m in METERS:
            for customer in ("c1", "c2"):
                for start, end in [*PERIODS, period]:
                    agg = await store.meter_aggregate(m.name, customer, start, end)
                    expected = brute_force(m, stored, customer, start, end)
                    assert comparable(m, observed(m, agg)) == comparable(m, expected)
                    assert agg == await one.meter_aggregate(m.name, customer, start, end)
        before = await aggregate_rows(backend, where)
        await store.append(flat, now_ms=SEALED)  # every event again: nothing changes
        assert await aggregate_rows(backend, where) == before
        await store.rebuild_aggregates()
        assert await aggregate_rows(backend, where) == before
    finally:
        await store.close()
        await one.close()


async def with_backend(engine: str, check: Any, *args: Any) -> None:
    """Run check(backend, *args) on a backend of its own, disposed of afterwards."""
    with tempfile.TemporaryDirectory() as workdir:
        backend = make_backend(engine, Path(workdir))
        try:
            await check(backend, *args)
        finally:
            await backend.dispose()


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(usage_events(), max_size=30), cuts=st.lists(st.integers(0, 30)),
       period=st.tuples(st.integers(-DAY - 3000, 2 * DAY + 3000),
                        st.integers(-DAY - 3000, 2 * DAY + 3000)))
def test_aggregates_equal_a_brute_force_recomputation(
    engine: str, events: list[UsageEvent], cuts: list[int], period: tuple[int, int]
) -> None:
    asyncio.run(with_backend(engine, check_against_brute_force, batched(events, cuts), period))


async def quantities_in_order(
    backend: Backend, events: list[UsageEvent], out: list[object]
) -> None:
    store = await store_batches(backend, await backend.location(), [events])
    try:
        for m in METERS:
            if m.aggregation != "last":
                for customer in ("c1", "c2"):
                    agg = await store.meter_aggregate(m.name, customer, -2 * DAY, 3 * DAY)
                    out.append(comparable(m, observed(m, agg)))
    finally:
        await store.close()


@pytest.mark.parametrize("engine", ENGINES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(usage_events(), max_size=20, unique_by=lambda e: e.event_id),
       data=st.data())
def test_count_sum_and_max_do_not_depend_on_event_order(
    engine: str, events: list[UsageEvent], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(events))
    a: list[object] = []
    b: list[object] = []
    asyncio.run(with_backend(engine, quantities_in_order, events, a))
    asyncio.run(with_backend(engine, quantities_in_order, shuffled, b))
    assert a == b


# ------------------------------------------------------------------ rebuild
# Opening with changed meters: a single SQLite instance rebuilds them; replicas on PostgreSQL
# follow the fleet policy instead (tests/store/test_pg_fleet_meters.py).


async def test_rebuild_equals_incremental(backend: Backend, location: str, store: Store) -> None:
    for i in range(5):
        await store.append(
            [event(f"e{i}-{j}", f"c{j % 3}", ("tokens", "api.call")[j % 2], ts=i * 700 + j,
                   n=Decimal(j) / 4, tier=("pro", "free")[i % 2]) for j in range(40)],
            now_ms=i,
        )
    before = await aggregate_rows(backend, location)
    assert {row[0] for row in before} == {m.name for m in METERS}
    await store.rebuild_aggregates(["tokens_sum"])
    assert await aggregate_rows(backend, location) == before
    await store.rebuild_aggregates()
    assert await aggregate_rows(backend, location) == before
    with pytest.raises(KeyError):
        await store.rebuild_aggregates(["nope"])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # pg_meters.py: fleet policy
async def test_a_changed_meter_is_rebuilt_on_open_and_only_it(
    backend: Backend, location: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls = meter("calls", "api.call", "count")
    first = await opened(backend, location, (calls, meter("tokens", "tokens", "sum", "n")), now=1)
    await first.append([event("a", n=2, m=10), event("b", n=3, m=20),
                        event("c", name="api.call")], now_ms=1)
    await first.close()
    for name in STORE_LOGGERS:
        caplog.set_level(logging.INFO, logger=name)
    second = await opened(backend, location, (calls, meter("tokens", "tokens", "sum", "m")),
                          now=2)
    try:
        assert quantity("sum", await second.meter_aggregate("tokens", "c1", 0, BUCKET)) == 30
        assert quantity("count", await second.meter_aggregate("calls", "c1", 0, BUCKET)) == 1
    finally:
        await second.close()
    built = await backend.rows(location, "SELECT meter, built_at_ms FROM meter_state ORDER BY 1")
    assert built == [("calls", 1), ("tokens", 2)]
    assert [r.message for r in caplog.records if "rebuilding" in r.message] == [
        "rebuilding the aggregates of meter tokens (definition or bucket size changed)"
    ]


async def test_opening_with_rebuild_all_rebuilds_every_meter_once(
    backend: Backend, location: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = await opened(backend, location, now=1)
    await first.append([event("a", n=2), event("b", name="api.call")], now_ms=1)
    before = await aggregate_rows(backend, location)
    await first.close()
    for name in STORE_LOGGERS:
        caplog.set_level(logging.INFO, logger=name)
    store = backend.store(location, METERS, BUCKET, lambda: 5)
    await store.open(rebuild_all=True)  # type: ignore[call-arg]  # beyond the protocol's open
    await store.close()
    rebuilt = [r.message for r in caplog.records if "rebuild requested" in r.message]
    assert len(rebuilt) == len(METERS)
    assert set(await backend.rows(location, "SELECT built_at_ms FROM meter_state")) == {(5,)}
    assert await aggregate_rows(backend, location) == before


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # pg_meters.py: fleet policy
async def test_a_removed_meter_that_returns_is_rebuilt(backend: Backend, location: str) -> None:
    calls, tokens = meter("calls", "api.call", "count"), meter("tokens", "tokens", "sum", "n")
    first = await opened(backend, location, (calls, tokens))
    await first.append([event("a", n=2)], now_ms=1)
    await first.close()
    without = await opened(backend, location, (calls,))
    await without.append([event("b", n=3)], now_ms=2)
    await without.close()
    assert await backend.rows(location, "SELECT DISTINCT meter FROM meter_aggregates") == []
    assert await backend.rows(location, "SELECT meter FROM meter_state") == [("calls",)]
    back = await opened(backend, location, (calls, tokens))
    try:
        assert quantity("sum", await back.meter_aggregate("tokens", "c1", 0, BUCKET)) == 5
    finally:
        await back.close()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)  # pg_meters.py: fleet policy
async def test_a_new_bucket_size_rebuilds_every_meter(backend: Backend, location: str) -> None:
    first = await opened(backend, location)
    await first.append([event("a", ts=500, n=1), event("b", ts=1500, n=2)], now_ms=1)
    await first.close()
    wider = await opened(backend, location, bucket_ms=2 * BUCKET)
    try:
        found = await wider.meter_quantities_by_customer("tokens_sum", 0, 2 * BUCKET)
        assert {c: quantity("sum", a) for c, a in found.items()} == {"c1": 3}
    finally:
        await wider.close()
    assert set(await backend.rows(location, "SELECT bucket_ms FROM meter_state")) == {
        (2 * BUCKET,)
    }
    assert set(await backend.rows(
        location, "SELECT bucket_start_ms, size_ms FROM meter_aggregates"
    )) == {(0, 2 * BUCKET)}  # no day is sealed yet: no rollup row


# ------------------------------------------------------------------- reopen


async def test_reopening_keeps_everything(backend: Backend, location: str) -> None:
    store = await opened(backend, location)
    await store.append([event("a", ts=10, n=Decimal("1.25")), event("b", "c2", "api.call")], 100)
    await store.set_customer_plan("c2", "pro", now_ms=200)
    await store.add_key("c1", "k1", b"\x01" * 32, "sk_abcde", now_ms=300)
    snapshot = (
        await everything(store), await store.list_customers(100), await store.list_keys("c1"),
        await store.active_key_hashes(), await store.keys_version(), await store.watermark(),
        await store.meter_aggregate("tokens_sum", "c1", 0, BUCKET),
    )
    await store.close()
    store = await opened(backend, location)
    try:
        assert snapshot == (
            await everything(store), await store.list_customers(100),
            await store.list_keys("c1"), await store.active_key_hashes(),
            await store.keys_version(), await store.watermark(),
            await store.meter_aggregate("tokens_sum", "c1", 0, BUCKET),
        )
        assert (await store.append([event("c")], 50)).watermark == 101  # past the old one
    finally:
        await store.close()


async def test_using_a_closed_store_is_an_error(backend: Backend, location: str) -> None:
    store = await opened(backend, location)
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="not open"):
        await store.watermark()
    with pytest.raises(StoreError, match="not open"):
        await store.append([event("a")], 1)


# --------------------------------------------------------------------- keys


async def test_keys_are_stored_as_hashes_only(backend: Backend, location: str) -> None:
    secret = "sk_live_" + "q7" * 20
    key_hash = hashlib.sha256(secret.encode()).digest()
    store = await opened(backend, location)
    await store.add_key("c1", "k1", key_hash, secret[:8], now_ms=5)
    await store.close()
    stored = await backend.contents(location)
    assert key_hash in stored or key_hash.hex().encode() in stored  # raw, or as bytea text
    assert secret.encode() not in stored
    assert secret[:12].encode() not in stored


async def test_key_lifecycle(store: Store) -> None:
    h1, h2, h3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    assert await store.keys_version() == 0
    assert await store.add_key("c1", "k1", h1, "sk_aaaaa", now_ms=10) == ApiKey(
        "k1", "c1", "sk_aaaaa", 10, None
    )
    await store.add_key("c1", "k2", h2, "sk_bbbbb", now_ms=20)
    await store.add_key("c2", "k3", h3, "sk_ccccc", now_ms=30)
    assert await store.get_customer("c2") == Customer("c2", 30, None, None)
    assert await store.keys_version() == 3
    with pytest.raises(DuplicateKey):
        await store.add_key("c1", "k1", b"\x09" * 32, "sk_ddddd", now_ms=40)
    with pytest.raises(DuplicateKey):
        await store.add_key("c4", "k9", h1, "sk_eeeee", now_ms=40)
    assert await store.get_customer("c4") is None  # the failed add left no customer behind
    assert await store.keys_version() == 3
    assert await store.revoke_key("c2", "k1", now_ms=50) is False  # not c2's key
    assert await store.revoke_key("c1", "k1", now_ms=50) is True
    assert await store.revoke_key("c1", "k1", now_ms=60) is False
    assert await store.keys_version() == 4
    assert await store.active_key_hashes() == {h2: ("c1", "k2"), h3: ("c2", "k3")}
    assert await store.list_keys("c1") == [
        ApiKey("k1", "c1", "sk_aaaaa", 10, 50), ApiKey("k2", "c1", "sk_bbbbb", 20, None)
    ]


async def test_a_rebuild_longer_than_one_read_batch_equals_incremental(
    backend: Backend, location: str, store: Store
) -> None:
    # 25,000 events: more than one batch of raw events read by a rebuild (10,000).
    for i in range(25):
        await store.append(
            [event(f"e{i}-{j}", f"c{j % 7}", ts=(i * 1000 + j) * 17 % (3 * DAY), n=j % 5)
             for j in range(1000)],
            now_ms=i,
        )
    before = await aggregate_rows(backend, location)
    await store.rebuild_aggregates(["tokens_sum", "tokens_last"])
    assert await aggregate_rows(backend, location) == before
    agg = await store.meter_aggregate("tokens_sum", "c3", -DAY, 4 * DAY)
    assert agg is not None and agg.count == sum(1 for j in range(1000) if j % 7 == 3) * 25
