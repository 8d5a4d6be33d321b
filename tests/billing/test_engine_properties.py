"""Invariants of the statement engine, through the real SQLite store, for generated events:
batches, order and duplicates never change a statement; a run repeated, concurrent or cut
short by a crash leaves one statement per customer and period with the same numbers; credits
are never negative and never exceed what was granted."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import sqlite3
import tempfile
from collections.abc import Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing.credits import CreditGrant
from billing.engine import StatementEngine
from billing.events import UsageEvent
from billing.pricing import UsageLine
from billing.record_codec import decode
from billing.render import statement_to_json
from billing.statement import Statement
from tests.billing.test_engine_kit import (
    DAY,
    FEB,
    GRACE,
    HOUR,
    JAN,
    MAR,
    UTC,
    Billing,
    open_billing,
)

D = Decimal
INGESTED = JAN.end_ms - HOUR  # every generated event is stored by then
SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RUNS = (JAN.end_ms, JAN.end_ms + GRACE, FEB.end_ms + GRACE)  # drafts, finals, February


@st.composite
def usage_events(draw: st.DrawFn) -> list[UsageEvent]:
    """Events of three customers on every meter, in January and February. Timestamps are
    distinct: a `last` meter breaks timestamp ties by ingestion order, by definition."""
    count = draw(st.integers(1, 25))
    stamps = draw(st.lists(st.integers(JAN.start_ms, INGESTED - 1), min_size=count,
                           max_size=count, unique=True))
    events = []
    for i, ts in enumerate(stamps):
        kind = draw(st.sampled_from(["api.call", "bandwidth", "seats.reported",
                                     "storage.snapshot", "llm.tokens"]))
        value = draw(st.decimals(min_value=0, max_value=10**12, places=2))
        key = {"bandwidth": "bytes", "seats.reported": "seats", "storage.snapshot": "gb",
               "llm.tokens": "n"}.get(kind)
        events.append(UsageEvent(f"e{i}", draw(st.sampled_from("abc")), kind, ts,
                                 {} if key is None else {key: value}))
    return events


def plan_of(customer: str) -> str:
    return {"a": "examples", "b": "pro", "c": "basic"}[customer]


async def billed(path: Path, batches: list[list[UsageEvent]], **options: Any) -> Billing:
    """A store on `path` holding the batches and every customer on its plan from January.

    The batches are ingested one ms apart, then an event no meter reads at INGESTED, so
    that stores fed differently share the watermark (a statement's cutoff)."""
    billing = await open_billing(path, **options)
    billing.clock.now = JAN.start_ms
    for customer in "abc":
        await billing.engine.change_plan(customer, plan_of(customer))
    for i, batch in enumerate(batches):
        await billing.append(batch, INGESTED - len(batches) + i)
    await billing.append([UsageEvent("watermark", "a", "unmetered", JAN.start_ms, {})],
                         INGESTED)
    return billing


async def rendered(billing: Billing) -> dict[str, Any]:
    """Every stored statement as the admin API renders it, by id."""
    page = await billing.store.list_statements(customer_id=None, status=None,
                                               finalized_after_ms=None, limit=1000)
    return {s.head.statement_id: statement_to_json(decode(s.record).statement, UTC)
            for s in page}


async def run_all(billing: Billing) -> None:
    for at in RUNS:
        await billing.close(at)


def in_workdir(check: Callable[[Path], Coroutine[Any, Any, None]]) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(check(Path(workdir)))


# ------------------------------------------------------------ batches, duplicates


@SETTINGS
@given(events=usage_events(), data=st.data())
def test_batches_order_and_duplicates_never_change_a_statement(
    events: list[UsageEvent], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(events))
    repeated = shuffled + data.draw(st.lists(st.sampled_from(events), max_size=10))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(repeated)), max_size=6)))
    batches = [repeated[a:b] for a, b in itertools.pairwise([0, *cuts, len(repeated)])]

    async def check(workdir: Path) -> None:
        one = await billed(workdir / "one.db", [events])
        many = await billed(workdir / "many.db", [b for b in batches if b])
        try:
            for at in RUNS:
                await one.close(at)
                await many.close(at)
                assert await rendered(many) == await rendered(one)
            assert len(await rendered(one)) == 6  # three customers, two periods
        finally:
            await one.store.close()
            await many.store.close()

    in_workdir(check)


@SETTINGS
@given(events=usage_events())
def test_a_run_repeated_changes_nothing(events: list[UsageEvent]) -> None:
    async def check(workdir: Path) -> None:
        billing = await billed(workdir / "b.db", [events])
        try:
            for at in RUNS:
                await billing.close(at)
                first = await billing.store.list_statements(
                    customer_id=None, status=None, finalized_after_ms=None, limit=1000)
                assert await billing.close(at) == (0, 0)
                assert await billing.store.list_statements(
                    customer_id=None, status=None, finalized_after_ms=None, limit=1000
                ) == first
        finally:
            await billing.store.close()

    in_workdir(check)


# ------------------------------------------------------------ concurrency, crashes


@SETTINGS
@given(events=usage_events(), runs=st.integers(2, 5))
def test_concurrent_runs_write_each_statement_once(events: list[UsageEvent], runs: int) -> None:
    async def check(workdir: Path) -> None:
        alone = await billed(workdir / "alone.db", [events])
        shared = await billed(workdir / "shared.db", [events])
        # a second store and engine on the same file: another process, same clock
        other = await open_billing(shared.path, clock=shared.clock)
        try:
            for at in RUNS:
                drafted, finalized = await alone.close(at)
                shared.clock.now = at
                engines = [shared.engine, other.engine] * runs
                results = await asyncio.gather(*(e.close() for e in engines))
                assert sum(r.drafted for r in results) == drafted
                assert sum(r.finalized for r in results) == finalized
                assert await rendered(shared) == await rendered(alone)
        finally:
            for billing in (alone, shared, other):
                await billing.store.close()

    in_workdir(check)


@SETTINGS
@given(events=usage_events(), written=st.integers(0, 5), run=st.sampled_from(RUNS))
def test_a_run_cut_short_is_completed_by_the_next_with_the_same_numbers(
    events: list[UsageEvent], written: int, run: int
) -> None:
    async def check(workdir: Path) -> None:
        clean = await billed(workdir / "clean.db", [events])
        crashed = await billed(workdir / "crashed.db", [events], write_batch=1)
        try:
            await run_all(clean)
            for at in RUNS:
                if at == run:
                    await crash_after(crashed, at, written)
                    crashed.store, crashed.engine = await reopened(crashed)
                await crashed.close(at)
            assert await rendered(crashed) == await rendered(clean)
        finally:
            await clean.store.close()
            await crashed.store.close()

    in_workdir(check)


async def crash_after(billing: Billing, at: int, written: int) -> None:
    """Run at `at` and kill the run once `written` customers' statements are committed
    (one transaction each): cancel it and close the store, as a dying process would."""
    def progress() -> int:
        with sqlite3.connect(billing.path) as conn:
            row = conn.execute("SELECT COUNT(*) + TOTAL(status = 'final') FROM statements")
            return int(row.fetchone()[0])

    baseline = progress()
    billing.clock.now = at
    task = asyncio.get_running_loop().create_task(billing.engine.close())
    while not task.done() and progress() < baseline + written:  # noqa: ASYNC110 (a file)
        await asyncio.sleep(0.001)  # polls the file; asserts nothing about time
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await billing.store.close()


async def reopened(billing: Billing) -> tuple[Any, StatementEngine]:
    again = await open_billing(billing.path, clock=billing.clock)
    return again.store, again.engine


# -------------------------------------------------------------------- credits


@st.composite
def grants(draw: st.DrawFn) -> list[CreditGrant]:
    found = []
    for i in range(draw(st.integers(1, 4))):
        effective = draw(st.sampled_from([JAN.start_ms, JAN.start_ms + 10 * DAY, FEB.start_ms]))
        expires = draw(st.sampled_from([None, None, FEB.start_ms + DAY, MAR.start_ms, JAN.end_ms]))
        if expires is not None and expires <= effective:
            expires = None
        credits = draw(st.decimals(min_value=1, max_value=80_000, places=1))
        meter = draw(st.sampled_from(["tokens", "tokens", "api_calls"]))
        found.append(CreditGrant(f"g{i}", meter, credits, effective, expires, JAN.start_ms))
    return found


# Monthly usage is mostly beyond the 50,000 per-cycle credits, so grants get burned.
MONTHLY_USAGE = st.one_of(st.just(0), st.integers(50_000, 150_000))


@settings(SETTINGS, max_examples=50)
@given(granted=grants(), usage=st.lists(MONTHLY_USAGE, min_size=3, max_size=3),
       seed=st.randoms(use_true_random=False), together=st.booleans())
@example(  # one grant drawn on by two months billed in one run
    granted=[CreditGrant("g", "tokens", D(60_000), JAN.start_ms, None, JAN.start_ms)],
    usage=[100_000, 100_000, 0], seed=random.Random(0), together=True)
def test_credits_are_never_negative_and_never_exceed_the_grants(
    granted: list[CreditGrant], usage: list[int], seed: random.Random, together: bool
) -> None:
    async def check(workdir: Path) -> None:
        billing = await open_billing(workdir / "c.db", default_plan="pro")
        try:
            await billing.store.ensure_customer("c", JAN.start_ms)
            for grant in granted:
                await billing.store.add_grant("c", grant)
            for month, n in zip((JAN, FEB, MAR), usage, strict=True):
                ts = month.start_ms + seed.randrange(month.duration_ms)
                await billing.append([UsageEvent(f"t{month.start_ms}", "c", "llm.tokens", ts,
                                                 {"n": n})], month.start_ms + HOUR)
                if not together:  # else one run bills the three months in a chain
                    await billing.close(month.end_ms + GRACE)
            await billing.close(MAR.end_ms + GRACE)
            statements = [decode(s.record).statement for s in await billing.store.list_statements(
                customer_id="c", status="final", finalized_after_ms=None, limit=10)]
            assert len(statements) == 3
            check_credits(statements, granted)
            for balance in await billing.store.grant_balances("c"):
                assert 0 <= balance.burned <= balance.grant.credits
        finally:
            await billing.store.close()

    in_workdir(check)


def check_credits(statements: list[Statement], granted: list[CreditGrant]) -> None:
    burned: dict[str, Decimal] = {}
    carried = D(0)
    for statement in statements:
        for line in statement.lines:
            if isinstance(line, UsageLine):
                assert line.credits_applied >= 0 and line.credits_remaining >= 0
                assert 0 <= line.billable_units <= max(line.quantity, D(0))
        kinds: dict[str, Decimal] = {}
        for burn in statement.credit_burns:
            assert burn.credits > 0
            kinds[burn.kind] = kinds.get(burn.kind, D(0)) + burn.credits
            if burn.kind == "grant":
                burned[burn.grant_id] = burned.get(burn.grant_id, D(0)) + burn.credits
        assert kinds.get("per_cycle", D(0)) <= 50_000  # the pro plan's per-cycle credits
        assert kinds.get("rollover", D(0)) <= carried
        carried = dict(statement.rollover).get("tokens", D(0))
    limits = {g.grant_id: g.credits for g in granted}
    assert all(burned[grant_id] <= limits[grant_id] for grant_id in burned)

