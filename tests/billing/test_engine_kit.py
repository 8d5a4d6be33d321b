"""Shared factories for the engine tests (no tests here): a real SQLite store, an engine on
it with a clock the test moves, events and plans."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from billing.cycles import Cycle, Period, bucket_ms
from billing.engine import StatementEngine
from billing.events import MetadataValue, UsageEvent
from billing.meters import Meter
from billing.plans import BillingSettings, CreditPolicy, Plan, Price
from billing.pricing import UsageLine
from billing.record_codec import decode
from billing.statement import AdjustmentLine, ManualLine, Statement
from billing.store.sqlite import SqliteStore

D = Decimal
UTC = ZoneInfo("UTC")
HOUR = 3_600_000
DAY = 24 * HOUR
JAN = Period(1_767_225_600_000, 1_769_904_000_000)  # 2026-01 in UTC
FEB = Period(JAN.end_ms, 1_772_323_200_000)
MAR = Period(FEB.end_ms, 1_775_001_600_000)
GRACE = HOUR

METERS = (
    Meter("api_calls", "api.call", "count"),
    Meter("egress_bytes", "bandwidth", "sum", "bytes"),
    Meter("peak_seats", "seats.reported", "max", "seats"),
    Meter("storage_gb", "storage.snapshot", "last", "gb"),
    Meter("tokens", "llm.tokens", "sum", "n"),
)
MONTHLY = Cycle(calendar="monthly")
EXAMPLES = Plan("examples", "USD", MONTHLY, None, (
    Price("egress_bytes", D(5), D(10), D(1_000_000_000)),
    Price("peak_seats", D(2), D(5)),
    Price("storage_gb", D("0.10")),
    Price("api_calls", D("0.02"), D(1000)),
))
PRO = Plan("pro", "USD", MONTHLY, D("49.00"), (
    Price("api_calls", D("0.001"), D(10_000)),
    Price("tokens", D("0.00002"), credits=CreditPolicy(D(50_000), D(1), D(50))),
))
BASIC = Plan("basic", "USD", MONTHLY, D("10.00"), (Price("api_calls", D("0.01")),))
WEEKLY = Plan("weekly", "USD", Cycle(calendar="weekly"), D("7.00"), (Price("api_calls", D(1)),))
EURO = Plan("euro", "EUR", MONTHLY, None, (Price("api_calls", D("0.01")),))
PLANS = (EXAMPLES, PRO, BASIC, WEEKLY, EURO)

_ids = itertools.count()


def event(customer: str, name: str, ts: int, **metadata: MetadataValue) -> UsageEvent:
    """An ingest event with a fresh id."""
    return UsageEvent(f"e{next(_ids)}", customer, name, ts, metadata, "api")


@dataclass
class Clock:
    """The wall clock of a test: `now` is what the engine and store read."""

    now: int = JAN.start_ms

    def __call__(self) -> int:
        return self.now


@dataclass
class Billing:
    """A store and an engine on one file, sharing one test clock."""

    path: Path
    clock: Clock
    store: SqliteStore
    engine: StatementEngine
    extra: list[SqliteStore] = field(default_factory=list)

    async def append(self, events: Sequence[UsageEvent], at: int | None = None) -> None:
        """Store events as if ingested at `at` (default: the clock)."""
        await self.store.append(events, self.clock.now if at is None else at)

    async def close(self, at: int) -> tuple[int, int]:
        """Move the clock to `at` and run; (drafted, finalized)."""
        self.clock.now = at
        result = await self.engine.close()
        return result.drafted, result.finalized

    async def statement(self, customer: str, period: Period) -> Statement:
        """The stored statement of `customer` for the period starting with `period`."""
        stored = await self.store.get_statement(statement_id_of(customer, period))
        assert stored is not None, f"no statement of {customer} for {period}"
        return decode(stored.record).statement


def statement_id_of(customer: str, period: Period) -> str:
    from billing.statement import statement_id

    return statement_id(customer, period.start_ms)


def usage(statement: Statement, meter: str) -> UsageLine:
    return next(line for line in statement.lines
                if isinstance(line, UsageLine) and line.meter == meter)


def adjustments(statement: Statement) -> list[AdjustmentLine]:
    return [line for line in statement.lines if isinstance(line, AdjustmentLine)]


def manual(statement: Statement) -> list[ManualLine]:
    return [line for line in statement.lines if isinstance(line, ManualLine)]


async def open_billing(path: Path, *, plans: Sequence[Plan] = PLANS,
                       default_plan: str | None = "examples", grace_ms: int = GRACE,
                       clock: Clock | None = None, write_batch: int = 500) -> Billing:
    clock = clock or Clock()
    bucket = bucket_ms([p.cycle for p in plans], UTC)
    store = SqliteStore(str(path), METERS, bucket, clock=clock)
    await store.open()
    settings = BillingSettings(default_plan, UTC, grace_ms)
    engine = StatementEngine(store, plans, settings, [m.name for m in METERS], clock=clock,
                             write_batch=write_batch)
    await engine.open()
    return Billing(path, clock, store, engine)
