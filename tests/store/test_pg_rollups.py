"""PostgreSQL's server-side aggregate merge and sealed rollups (pg_aggregates.py,
pg_rollups.py) against the Python merge they must equal, digit for digit: a statement shows
a quantity's text, so 2 and 2.0 must not depend on how events were batched or sealed."""

from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing.events import UsageEvent
from billing.meters import Aggregate, fold
from billing.store.base import Store
from tests.store.backends import PostgresBackend
from tests.store.factories import BUCKET, DAY, METERS, SEALED, event, opened, sealing

D = Decimal
ROWS = ("SELECT meter, customer_id, bucket_start_ms, size_ms, count, value::text, last_ts_ms,"
        " last_seq FROM meter_aggregates ORDER BY 1, 2, 3, 4")
# Numerically equal values whose text differs: which one a merge keeps is part of the result.
TIES = [D("2"), D("2.0"), D("2.00"), D("-2"), D("-2.0"), D("0"), D("0.00"), D("7"), D("-7.5")]


async def sizes(pg: PostgresBackend, url: str) -> set[tuple[int, int]]:
    """(day, size) of the rows of tokens_sum, the day as bucket_start // DAY."""
    found = await pg.rows(url, "SELECT bucket_start_ms, size_ms FROM meter_aggregates"
                               " WHERE meter = 'tokens_sum'")
    return {(start // DAY, size) for start, size in found}


async def test_only_days_that_ended_long_enough_ago_have_rollup_rows(pg: PostgresBackend) -> None:
    url = await pg.location()
    store = await opened(pg, url)
    try:
        await store.append([event(f"d{day}", ts=day * DAY + 5, n=1) for day in range(3)], 1)
        assert await sizes(pg, url) == {(0, BUCKET), (1, BUCKET), (2, BUCKET)}
        await store.append([event("more", ts=5, n=1)], sealing(2))  # days 0 and 1 end
        assert await sizes(pg, url) == {(0, BUCKET), (1, BUCKET), (2, BUCKET), (0, DAY), (1, DAY)}
        await store.append([event("late", ts=DAY + 7, n=4)], sealing(2) + 1)  # into day 1
        agg = await store.meter_aggregate("tokens_sum", "c1", 0, 2 * DAY)
        assert agg is not None and (agg.count, agg.value) == (4, D(7))
        [(rollup,)] = await pg.rows(url, "SELECT value FROM meter_aggregates WHERE meter ="
                                         f" 'tokens_sum' AND size_ms = {DAY} AND bucket_start_ms"
                                         f" = {DAY}")
        assert rollup == 5  # the late event reached the sealed day's rollup too
    finally:
        await store.close()


async def test_sealing_in_sql_equals_rollups_merged_in_python(pg: PostgresBackend) -> None:
    url = await pg.location()
    store = await opened(pg, url)
    try:
        values = itertools.cycle(TIES)
        await store.append([event(f"e{i}", f"c{i % 2}", ts=i * 997 % (3 * DAY), n=next(values))
                            for i in range(120)], 1)
        await store.append([event("seal", ts=0, n=D("2.0"))], SEALED)  # seals the three days
        sealed = await pg.rows(url, ROWS)
        assert {row[3] for row in sealed} == {BUCKET, DAY}
        await store.rebuild_aggregates()  # rollups of sealed days merged in Python
        assert await pg.rows(url, ROWS) == sealed
    finally:
        await store.close()


def python_rows(events: list[UsageEvent]) -> dict[tuple[str, str, int], tuple[int, str]]:
    """(meter, customer, bucket) -> (count, value text) of the Python fold, in seq order."""
    found: dict[tuple[str, str, int], Aggregate] = {}
    for seq, e in enumerate(events, 1):
        for m in METERS:
            value = m.read(e.metadata) if m.event_name == e.event_name else None
            if isinstance(value, Decimal):
                key = (m.name, e.customer_id, e.timestamp_ms - e.timestamp_ms % BUCKET)
                found[key] = fold(m.aggregation, found.get(key), value, e.timestamp_ms, seq)
    kinds = {m.name: m.aggregation for m in METERS}
    return {key: (agg.count, str(agg.count if kinds[key[0]] == "count" else agg.value))
            for key, agg in found.items()}


async def merged_rows(pg: PostgresBackend, events: list[UsageEvent],
                      cuts: list[int]) -> dict[tuple[str, str, int], tuple[int, str]]:
    url = await pg.location()
    store: Store = await opened(pg, url)
    try:
        bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
        for a, b in itertools.pairwise(bounds):
            await store.append(events[a:b], now_ms=1)
        found = await pg.rows(url, ROWS)
    finally:
        await store.close()
    return {(m, c, start): (count, text) for m, c, start, size, count, text, *_ in found
            if size == BUCKET}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.sampled_from(TIES), min_size=1, max_size=12),
       stamps=st.lists(st.integers(0, 2 * BUCKET - 1), min_size=12, max_size=12),
       cuts=st.lists(st.integers(0, 12), min_size=1))
@example(values=[D("2.0"), D("2"), D("-2"), D("-2.0")], stamps=[9] * 12, cuts=[1, 2, 3])
def test_the_sql_merge_keeps_the_value_the_python_merge_keeps(
    values: list[Decimal], stamps: list[int], cuts: list[int]
) -> None:
    events = [event(f"e{i}", ts=stamps[i], n=v) for i, v in enumerate(values)]

    async def check() -> None:
        backend = PostgresBackend()
        try:
            assert await merged_rows(backend, events, cuts) == python_rows(events)
        finally:
            await backend.dispose()

    asyncio.run(check())
