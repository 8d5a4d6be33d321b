"""proxy/usage_table.py and the collector that keeps it: the open-usage table, merged from
append deltas, equals a whole read of the store after any appends, rollovers and plan changes."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing.cycles import Period
from billing.engine import OpenPeriods, OpenUsageReader
from billing.events import UsageEvent
from billing.meters import Aggregate, Number, Tally
from billing.settings import ConfigError
from billing.statement import StatementStatus
from billing.store.base import AggregateDeltas
from proxy.config import parse_config
from proxy.usage_metrics import UsageCollector
from proxy.usage_table import OpenUsageTable, UsageTap
from tests.billing.test_engine_kit import DAY, HOUR, JAN, METERS, Billing, event, open_billing
from tests.proxy.test_config import BASE

D = Decimal
SPAN = Period(1000, 2000)
BUCKET = 100


# ------------------------------------------------------------- the table alone


def periods(by_span: Mapping[Period, list[str]]) -> OpenPeriods:
    return OpenPeriods((), 0, None, dict(by_span))


def loaded(usage: Mapping[str, dict[str, Decimal]] | None = None,
           spans: Mapping[Period, list[str]] | None = None, watermark: int = 10) -> OpenUsageTable:
    """A table that read `usage` for the customers of `spans` (default: a and b in SPAN)."""
    table = OpenUsageTable(METERS)
    table.begin_read()
    found = {m.name: dict((usage or {}).get(m.name, {})) for m in METERS}
    table.finish_read(periods(spans or {SPAN: ["a", "b"]}), watermark, found, None)
    return table


def deltas(after: int, stamp: int, cells: Mapping[tuple[str, str, int], Aggregate | Tally],
           bucket: int = BUCKET) -> AggregateDeltas:
    """Deltas of one append; `cells` keyed (meter, customer, bucket start)."""
    by_meter: dict[str, dict[tuple[str, int], Aggregate | Tally]] = {}
    for (meter, customer, start), agg in cells.items():
        by_meter.setdefault(meter, {})[(customer, start)] = agg
    return AggregateDeltas(after, stamp, bucket, by_meter)


def agg(value: int | str, count: int = 1, ts: int = 1500, seq: int = 1) -> Aggregate:
    return Aggregate(count, D(value), ts, seq)


def tally(value: Number, count: int = 1, ts: int = 1500, seq: int = 1) -> Tally:
    """A tally as the SQLite engine hands it over (`BatchFold.cells`): ints stay ints."""
    made = Tally(value, ts, seq)
    made.count = count
    return made


def test_tallies_merge_as_their_aggregates_do() -> None:
    # The same cells, once as Aggregates (PostgreSQL, the store process) and once as the
    # tallies of an SQLite append: the same quantities, digit for digit, all Decimal.
    usage = {"api_calls": {"a": D(5)}, "egress_bytes": {"a": D("7.5")},
             "peak_seats": {"a": D(7)}}
    cells: dict[tuple[str, str, int], Any] = {
        ("api_calls", "a", 1000): (tally(3, count=3), agg(3, count=3)),
        ("api_calls", "b", 1000): (tally(2, count=2), agg(2, count=2)),
        ("egress_bytes", "a", 1100): (tally(10**20), agg(10**20)),
        ("egress_bytes", "b", 1100): (tally(D("0.10")), agg("0.10")),
        ("peak_seats", "a", 1200): (tally(9), agg(9)),
        ("peak_seats", "b", 1200): (tally(D("2.0")), agg("2.0")),
    }
    from_tallies, from_aggregates = loaded(usage), loaded(usage)
    from_tallies.add(deltas(10, 11, {key: pair[0] for key, pair in cells.items()}))
    from_aggregates.add(deltas(10, 11, {key: pair[1] for key, pair in cells.items()}))
    expected = {"api_calls": {"a": "8", "b": "2"}, "egress_bytes": {"a": "100000000000000000007.5",
                "b": "0.10"}, "peak_seats": {"a": "9", "b": "2.0"}, "output_tokens": {},
                "storage_gb": {}, "hd_images": {}, "standard_images": {}}
    for table in (from_tallies, from_aggregates):
        shown = {m: {c: str(q) for c, q in per.items()} for m, per in table.usage.items()}
        assert {m: shown.get(m, {}) for m in expected} == expected
        assert all(type(q) is Decimal for per in table.usage.values() for q in per.values())


@pytest.mark.parametrize(("meter", "start", "usage", "stale"), [
    # a bucket inside the period merges: count adds counts, sum adds, max keeps the larger
    ("api_calls", 1000, {"a": D(5)}, set()),
    ("egress_bytes", 1900, {"a": D("10.5")}, set()),
    ("peak_seats", 1500, {"a": D(7)}, set()),
    # buckets of another period change nothing
    ("egress_bytes", 900, {"a": D("7.5")}, set()),
    ("egress_bytes", 2000, {"a": D("7.5")}, set()),
    # a bucket across an edge of the period cannot be split: the customer is re-read
    ("egress_bytes", 950, {"a": D("7.5")}, {"a"}),
    # `last` needs the stored latest event: re-read when its bucket is in the period
    ("storage_gb", 1500, {"a": D("7.5")}, {"a"}),
    ("storage_gb", 2100, {"a": D("7.5")}, set()),
])
def test_a_delta_merges_into_the_period_that_holds_its_bucket(
    meter: str, start: int, usage: dict[str, Decimal], stale: set[str]
) -> None:
    read = {"api_calls": {"a": D(2)}, "egress_bytes": {"a": D("7.5")},
            "peak_seats": {"a": D(7)}, "storage_gb": {"a": D("7.5")}}
    table = loaded(read)
    value = {"api_calls": 3, "egress_bytes": 3, "peak_seats": 4, "storage_gb": 9}[meter]
    table.add(deltas(10, 11, {(meter, "a", start): agg(value, count=3)}))
    assert dict(table.usage[meter]) == usage
    assert table.to_read(periods({SPAN: ["a", "b"]})) == stale
    assert not table.gap


def test_a_customer_without_a_known_period_is_read_once_it_has_one() -> None:
    table = loaded()
    table.add(deltas(10, 11, {("api_calls", "new", 1000): agg(1)}))
    assert dict(table.usage["api_calls"]) == {}
    assert table.to_read(periods({SPAN: ["a", "b"]})) == set()  # still none: nothing to read
    later = periods({SPAN: ["a", "b", "new"]})
    assert table.to_read(later) == {"new"}


def test_customers_whose_period_changed_are_read_again() -> None:
    table = loaded({"api_calls": {"a": D(1), "b": D(2)}})
    nxt = Period(2000, 3000)
    assert table.to_read(periods({nxt: ["a"], SPAN: ["b"], Period(0, 1000): ["c"]})) == {"a", "c"}
    assert table.to_read(periods({SPAN: ["a"]})) == {"b"}  # b has no open period any more


def test_a_commit_the_table_did_not_follow_is_a_gap() -> None:
    table = loaded(watermark=10)
    table.add(deltas(10, 11, {("api_calls", "a", 1000): agg(1)}))
    assert not table.gap and not table.behind(11)
    assert table.behind(12)  # the store holds a commit stamped 12 that no delta told of
    table.add(deltas(12, 13, {("api_calls", "a", 1000): agg(1)}))
    assert table.gap
    assert dict(table.usage["api_calls"]) == {"a": D(2)}  # what it knows, it still merges


def test_deltas_during_a_whole_read_count_once() -> None:
    table = loaded(watermark=10)
    table.begin_read()
    # committed before the read's snapshot (stamp 11 <= its watermark 12), and after it
    for after, stamp in ((10, 11), (11, 12), (12, 13)):
        table.add(deltas(after, stamp, {("api_calls", "a", 1000): agg(1)}))
    table.finish_read(periods({SPAN: ["a"]}), 12, {"api_calls": {"a": D(100)}}, None)
    assert dict(table.usage["api_calls"]) == {"a": D(101)}
    assert not table.gap and not table.behind(13)


def test_deltas_during_a_partial_read_count_once_for_the_customers_read() -> None:
    table = loaded({"api_calls": {"a": D(1), "b": D(1)}}, watermark=10)
    table.begin_read()
    both = {("api_calls", "a", 1000): agg(1), ("api_calls", "b", 1000): agg(1)}
    table.add(deltas(10, 11, both))
    table.add(deltas(11, 12, both))
    table.finish_read(periods({SPAN: ["a", "b"]}), 11, {"api_calls": {"a": D(50)}}, {"a"})
    # a: read with the first append in it, then the second; b: merged as they came
    assert dict(table.usage["api_calls"]) == {"a": D(51), "b": D(3)}


def test_a_failed_read_changes_nothing() -> None:
    table = loaded({"api_calls": {"a": D(1)}}, watermark=10)
    table.begin_read()
    table.add(deltas(10, 11, {("api_calls", "a", 1000): agg(1)}))
    table.cancel_read()
    table.add(deltas(11, 12, {("api_calls", "a", 1000): agg(1)}))
    assert dict(table.usage["api_calls"]) == {"a": D(3)}


def test_deltas_before_the_first_read_are_left_to_it() -> None:
    table = OpenUsageTable(METERS)
    table.add(deltas(0, 5, {("api_calls", "a", 1000): agg(1)}))
    assert not table.loaded and not table.behind(99)
    assert table.to_read(periods({SPAN: ["a"]})) is None  # everything


# ------------------------------------------- the collector on a real store and engine


@contextlib.asynccontextmanager
async def billing_at(workdir: Path) -> AsyncIterator[Billing]:
    billing = await open_billing(workdir / "usage.db")
    try:
        yield billing
    finally:
        await billing.store.close()


def collector_of(billing: Billing, source: Any = None, **options: Any) -> UsageCollector:
    return UsageCollector(source or billing.engine, METERS, clock=billing.clock, max_age_ms=0,
                          **options)


async def agrees(collector: UsageCollector, billing: Billing) -> bool:
    """Whether the table holds what a whole read of the store finds now."""
    whole = await billing.engine.open_usage(billing.clock.now)
    return {m: dict(q) for m, q in collector.table.usage.items()} == whole


def calls(customer: str, n: int, at: int) -> list[UsageEvent]:
    return [event(customer, "api.call", at) for _ in range(n)]


KINDS = {"api.call": None, "bandwidth": "bytes", "seats.reported": "seats",
         "storage.snapshot": "gb"}
appends = st.lists(st.tuples(
    st.sampled_from("xy"), st.sampled_from(sorted(KINDS)),
    st.sampled_from([-40 * DAY, -8 * DAY, -DAY, -HOUR, -1, 0, 1, HOUR, 2 * DAY]),
    st.sampled_from([D(1), D("2.0"), D("-3.25"), D(7), D("1e3")]),
), min_size=1, max_size=4).map(lambda found: ("append", found))
steps = st.one_of(
    appends,
    st.tuples(st.just("advance"), st.sampled_from([1, 12_345, HOUR, DAY, 7 * DAY, 31 * DAY])),
    # from the end of the current period (the admin API), or from now: an unaligned edge
    st.tuples(st.sampled_from(["change_plan", "plan_now"]), st.sampled_from("xyz"),
              st.sampled_from([None, "weekly", "basic"])),
    st.tuples(st.just("delete"), st.sampled_from("xyz")),
)


async def take(step: tuple[Any, ...], billing: Billing, tap: UsageTap) -> None:
    now = billing.clock.now
    if step[0] == "append":
        events = [UsageEvent(f"p{now}-{i}-{id(step)}", c, name, now + offset,
                             {} if KINDS[name] is None else {KINDS[name]: value})
                  for i, (c, name, offset, value) in enumerate(step[1])]
        await tap.append(events, now)
    elif step[0] == "advance":
        billing.clock.now += step[1]
    elif step[0] == "change_plan":
        customer = await billing.store.get_customer(step[1])
        if customer is not None and customer.deleted_at_ms is None:
            await billing.engine.change_plan(step[1], step[2])
    elif step[0] == "plan_now":
        await billing.store.set_customer_plan(step[1], step[2], now)
    else:
        await billing.store.delete_customer(step[1], now)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, min_size=1, max_size=25))
# a `last` value older than the one stored: the stored one stays
@example([("append", [("x", "storage.snapshot", 0, D(7))]),
          ("append", [("x", "storage.snapshot", -HOUR, D(1))])])
# a period that starts inside a bucket (a plan from now): the bucket's events before the
# start belong to the period before
@example([("append", [("x", "api.call", 0, D(1))]), ("advance", 12_345),
          ("plan_now", "x", "weekly"),
          ("append", [("x", "api.call", -1, D(1)), ("x", "api.call", 0, D(1))])])
def test_the_table_equals_a_whole_read_after_any_appends_rollovers_and_plan_changes(
    taken: list[tuple[Any, ...]]
) -> None:
    async def check(workdir: Path) -> None:
        async with billing_at(workdir) as billing:
            collector = collector_of(billing)
            tap = collector.tap(billing.store)
            await collector.refresh()
            for step in taken:
                await take(step, billing, tap)
                await collector.refresh()
                assert await agrees(collector, billing), step
                assert not collector.table.gap
                assert not collector.table.behind(await billing.store.watermark())

    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(check(Path(workdir)))


class Interleaved:
    """The engine as the collector's source, with `pending` appends committed through the tap
    while a read is in flight: after its snapshot began, before its quantities."""

    def __init__(self, billing: Billing) -> None:
        self.billing = billing
        self.tap: UsageTap | None = None
        self.pending: list[list[UsageEvent]] = []

    @contextlib.asynccontextmanager
    async def usage_reader(self, now_ms: int) -> AsyncIterator[OpenUsageReader]:
        async with self.billing.engine.usage_reader(now_ms) as reader:
            while self.pending:
                assert self.tap is not None
                await self.tap.append(self.pending.pop(0), now_ms)
            yield reader

    async def statement_counts(self) -> Mapping[StatementStatus, int]:
        return await self.billing.engine.statement_counts()


async def test_appends_committed_while_a_read_is_in_flight_count_once(tmp_path: Path) -> None:
    async with billing_at(tmp_path) as billing:
        billing.clock.now = JAN.start_ms + DAY
        source = Interleaved(billing)
        collector = collector_of(billing, source)
        tap = source.tap = collector.tap(billing.store)
        await billing.store.append(calls("a", 2, JAN.start_ms), JAN.start_ms)
        source.pending = [calls("a", 3, JAN.start_ms + HOUR)]
        await collector.refresh()  # the first, whole read
        assert dict(collector.table.usage["api_calls"]) == {"a": D(5)}
        # a partial read: "b" is new; "a" gets one more call meanwhile
        await tap.append(calls("b", 1, JAN.start_ms), billing.clock.now)
        source.pending = [calls("a", 1, JAN.start_ms), calls("b", 4, JAN.start_ms)]
        await collector.refresh()
        assert dict(collector.table.usage["api_calls"]) == {"a": D(6), "b": D(5)}
        assert await agrees(collector, billing)


@contextlib.asynccontextmanager
async def running(collector: UsageCollector) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(collector.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settles(collector: UsageCollector, billing: Billing) -> bool:
    """Whether refreshes bring the table to agree with the store within about two seconds."""
    for _ in range(200):
        await collector.refresh()
        if await agrees(collector, billing):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_commits_the_table_did_not_see_bring_a_whole_read(tmp_path: Path) -> None:
    """Another replica's appends (here: straight to the store, past the tap) show in the
    store's watermark; the table reads itself whole again."""
    async with billing_at(tmp_path) as billing:
        billing.clock.now = JAN.start_ms + DAY
        collector = collector_of(billing, reconcile_ms=3_600_000)
        tap = collector.tap(billing.store)
        async with running(collector):
            await tap.append(calls("a", 1, JAN.start_ms), billing.clock.now)
            await collector.refresh()
            await billing.store.append(calls("a", 2, JAN.start_ms), billing.clock.now)
            await collector.refresh()
            assert dict(collector.table.usage["api_calls"]) == {"a": D(1)}  # not seen yet
            assert await settles(collector, billing)
            assert dict(collector.table.usage["api_calls"]) == {"a": D(3)}
            # unseen, then followed by an append through the tap: the chain breaks
            await billing.store.append(calls("a", 1, JAN.start_ms), billing.clock.now)
            await tap.append(calls("a", 1, JAN.start_ms), billing.clock.now)
            assert collector.table.gap
            assert await settles(collector, billing)
            assert dict(collector.table.usage["api_calls"]) == {"a": D(5)}


async def test_the_table_is_read_whole_every_reconcile_interval(tmp_path: Path) -> None:
    """What no watermark shows (aggregates changed behind the store's back, as a rebuild of
    damaged ones would) is read at the next reconciliation."""
    async with billing_at(tmp_path) as billing:
        billing.clock.now = JAN.start_ms + DAY
        collector = collector_of(billing, reconcile_ms=50)
        await collector.tap(billing.store).append(calls("a", 2, JAN.start_ms), JAN.start_ms)
        async with running(collector):
            await collector.refresh()
            assert dict(collector.table.usage["api_calls"]) == {"a": D(2)}
            with sqlite3.connect(billing.path) as conn:
                conn.execute("UPDATE meter_aggregates SET count = 9, value = '9'"
                             " WHERE meter = 'api_calls'")
            assert await settles(collector, billing)
            assert dict(collector.table.usage["api_calls"]) == {"a": D(9)}


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(("value", "expected"), [(None, 300_000), ("30s", 30_000), ("1h", HOUR)])
def test_usage_reconcile_is_a_duration_of_five_minutes_by_default(
    value: str | None, expected: int
) -> None:
    text = BASE if value is None else BASE + f"metrics:\n  usage_reconcile: {value}\n"
    assert parse_config(text, "m.yaml").metrics.usage_reconcile_ms == expected


@pytest.mark.parametrize(("value", "problem"), [
    ("0s", "must be more than 0s"),
    ("soon", "is not a duration"),
])
def test_usage_reconcile_must_be_a_positive_duration(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + f"metrics:\n  usage_reconcile: {value}\n", "m.yaml")
    [line] = [p.render("m.yaml") for p in caught.value.problems]
    assert "metrics.usage_reconcile: " in line and problem in line

