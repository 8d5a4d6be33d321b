"""The statement engine: from stored events to draft and final statements.

A run (`close`) reads everything it needs in one store snapshot (accounts, quantities from
the aggregates, late usage), computes every customer's statements with the pure functions of
billing/closing.py, and writes them per customer, in batches, under the store's unique
(customer, period start) key: a final statement is never written twice or changed, a draft
is replaced by its recomputation. Runs in one process take turns (a lock); runs in several
processes are safe through the store (see `CustomerWrite`). A run that dies half way leaves
whole customers written or not, and the next run completes it with the same numbers.

The usage preview computes a customer's statements the same way, through the period asked.
`usage_reader` (and `open_usage`, a whole read of it) and `statement_counts` are what
/metrics reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from decimal import Decimal

from billing import gather
from billing.closing import Account, Quantities, Step, adjustment_only, chain, plan_steps
from billing.cycles import Period, period_containing
from billing.events import now_ms
from billing.money import EXACT
from billing.plans import BillingSettings, Plan
from billing.record_codec import decode, encode
from billing.records import StatementRecord
from billing.statement import LateUsage, StatementStatus
from billing.store.base import Customer
from billing.store.ledger import (
    CustomerWrite,
    CycleRecord,
    LedgerSnapshot,
    LedgerStore,
    StatementHead,
    StatementWrite,
    WriteResult,
)
from billing.timeline import CycleBook, Timeline

log = logging.getLogger(__name__)

WRITE_BATCH = 500  # customers per write transaction: bounds how long event flushes wait
YIELD_EVERY = 100  # customers computed between two yields to the event loop


@dataclass(frozen=True, slots=True)
class CloseResult:
    """What a run did: drafts created, statements made final, customers left for the next
    run (another process wrote them meanwhile); `next_due_ms`: when the next statement falls
    due (a period ends or a draft turns final), None when nothing is due ever."""

    drafted: int
    finalized: int
    skipped: int
    next_due_ms: int | None


@dataclass(frozen=True, slots=True)
class OpenPeriods:
    """Which customers' periods are open, as found at `found_at_ms` with the accounts at
    `version`; good until `until_ms` (None: for ever), when one ends or a plan changes."""

    version: tuple[int, ...]
    found_at_ms: int
    until_ms: int | None
    by_span: dict[Period, list[str]]

    def holds(self, version: tuple[int, ...], now_ms: int) -> bool:
        return (version == self.version and now_ms >= self.found_at_ms
                and (self.until_ms is None or now_ms < self.until_ms))


class OpenUsageReader:
    """Reads the usage of open periods from one store snapshot (`StatementEngine.usage_reader`).

    `periods`: whose periods were open at the instant asked; `watermark`: the largest
    `ingested_at_ms` in the snapshot (0: no events), so that whoever also follows append
    deltas knows which ones the quantities hold already: those stamped at or before it.
    """

    def __init__(self, snap: LedgerSnapshot, meters: tuple[str, ...], periods: OpenPeriods,
                 watermark: int) -> None:
        self._snap = snap
        self._meters = meters
        self.periods = periods
        self.watermark = watermark

    async def quantities(self, customers: AbstractSet[str] | None = None
                         ) -> dict[str, dict[str, Decimal]]:
        """meter -> customer -> quantity of the customer's open period, for `customers` (None:
        every customer with an open period); customers without one or without usage are
        absent. One read per distinct period and chunk of customers. Raises StoreError."""
        usage: dict[str, dict[str, Decimal]] = {meter: {} for meter in self._meters}
        for span, listed in self.periods.by_span.items():
            wanted = listed if customers is None else [c for c in listed if c in customers]
            for start in range(0, len(wanted), gather.QUANTITY_CHUNK):
                chunk = wanted[start:start + gather.QUANTITY_CHUNK]
                for meter, found in (await self._snap.quantities(self._meters, chunk,
                                                                 span)).items():
                    usage[meter].update(found)
        return usage


@dataclass(frozen=True, slots=True)
class PlanView:
    """A customer's plan now (None: none) and the change assigned for its next period."""

    plan: str | None
    pending_plan: str | None
    pending_from_ms: int | None


class CustomerDeleted(Exception):
    """The customer was deleted: its plan can no longer change."""


@dataclass(frozen=True, slots=True)
class Preview:
    """The statement of the period asked for: `stored` when it is final already, else as it
    would be written now (`ended`: whether its period is over)."""

    statement: StatementRecord
    stored: bool
    ended: bool


class StatementEngine:
    """Computes and stores statements for `plans` and `billing` (see the module docstring).

    `clock` gives the wall time in ms; `write_batch` how many customers' statements one
    write transaction holds. Call `open()` once before anything else.
    """

    def __init__(self, store: LedgerStore, plans: Sequence[Plan], billing: BillingSettings,
                 meters: Sequence[str], *, clock: Callable[[], int] = now_ms,
                 write_batch: int = WRITE_BATCH) -> None:
        self._store = store
        self._plans = {plan.name: plan for plan in plans}
        self._billing = billing
        self._meters = tuple(meters)
        self._clock = clock
        self._write_batch = write_batch
        self._setup = gather.Setup(self._plans, billing.default_plan,
                                   CycleBook((), billing.timezone))
        self._lock = asyncio.Lock()
        self._open_periods: OpenPeriods | None = None

    async def open(self) -> None:
        """Record the plans' cycles and time zone (a change applies to periods starting
        from now) and read their history. Raises StoreError."""
        now, zone = self._clock(), self._billing.timezone.key
        records = await self._store.record_cycles(
            [CycleRecord(p.name, now, str(p.cycle), zone) for p in self._plans.values()])
        self._setup = gather.Setup(self._plans, self._billing.default_plan,
                                   CycleBook(records, self._billing.timezone))

    # ---------------------------------------------------------------- the run

    async def close(self, now_ms: int | None = None) -> CloseResult:
        """Draft every period that has ended and finalise those past their grace period,
        at `now_ms` (default: the clock). Idempotent. Raises StoreError."""
        async with self._lock:
            now = self._clock() if now_ms is None else now_ms
            async with self._store.billing_snapshot() as snap:
                writes, due = await self._plan_run(snap, now)
            result = WriteResult()
            for start in range(0, len(writes), self._write_batch):
                batch = writes[start:start + self._write_batch]
                done = await self._store.write_statements(batch)
                result = WriteResult(result.drafted + done.drafted,
                                     result.finalized + done.finalized,
                                     result.skipped + done.skipped)
        if result.skipped:
            log.info("%d customers were billed by another process meanwhile; the next run "
                     "checks them again", result.skipped)
        return CloseResult(result.drafted, result.finalized, result.skipped,
                           _earliest(due, self.next_boundary(now)))

    async def _plan_run(self, snap: LedgerSnapshot,
                        now: int) -> tuple[list[CustomerWrite], int | None]:
        cutoff = await snap.watermark()
        accounts = await gather.accounts(snap, self._setup)
        steps: dict[str, list[Step]] = {}
        due: int | None = None
        for index, account in enumerate(accounts):
            await _let_others_run(index)
            found, account_due = plan_steps(account, now, self._billing.grace_period_ms)
            due = _earliest(due, account_due)
            if found:
                steps[account.customer.customer_id] = found
        gone = [a for a in accounts if a.customer.deleted_at_ms is not None
                and a.customer.customer_id not in steps and (a.pending or a.final)]
        wanted = [a for a in accounts if a.customer.customer_id in steps] + gone
        earlier = await gather.earlier(snap, wanted)
        quantities = await gather.quantities(snap, steps)
        writes = []
        for index, account in enumerate(wanted):
            await _let_others_run(index)
            cid = account.customer.customer_id
            late = earlier[cid].late if cid in earlier else ()
            if cid in steps:
                records = self._chain(account, steps[cid], quantities.get(cid, {}), cutoff, late)
            else:
                records = await self._adjustment_only(snap, account, late, now, cutoff)
            if records:
                final_head = None if account.final is None else account.final.period.start_ms
                writes.append(CustomerWrite(cid, final_head,
                                            tuple(_write(r, now) for r in records)))
        return writes, due

    def _chain(self, account: Account, steps: Sequence[Step], quantities: Quantities,
               cutoff: int, late: Sequence[LateUsage]) -> list[StatementRecord]:
        currency = steps[0].period.plan.currency
        late = gather.in_currency(late, currency, account.customer.customer_id)
        return chain(account, steps, quantities, cutoff, late)

    async def _adjustment_only(self, snap: LedgerSnapshot, account: Account,
                               late: Sequence[LateUsage], now: int,
                               cutoff: int) -> list[StatementRecord]:
        last = await gather.last_final(snap, account)
        if last is None:
            return []
        late = gather.in_currency(late, last.plan.currency, account.customer.customer_id)
        record = adjustment_only(account, last, late, now, cutoff)
        return [] if record is None else [record]

    def next_boundary(self, now_ms: int) -> int | None:
        """The earliest period end after `now_ms` among the plans: a customer may start on
        any plan at any time, so a run is due then at the latest."""
        ends = [period_containing(*self._setup.cycles.at(plan, now_ms), now_ms).end_ms
                for plan in self._plans.values()]
        return min(ends, default=None)

    # ------------------------------------------------------------- customers

    async def change_plan(self, customer_id: str, plan: str | None,
                          now_ms: int | None = None) -> Customer:
        """Assign `plan` (None: the default plan) from the end of the customer's current
        period, or from now when it has no period (a new customer, or none without a plan).
        Raises CustomerDeleted for a deleted customer, StoreError."""
        now = self._clock() if now_ms is None else now_ms
        async with self._store.billing_snapshot() as snap:
            found = await gather.accounts(snap, self._setup, [customer_id])
        effective = now
        if found:
            account = found[0]
            if account.customer.deleted_at_ms is not None:
                raise CustomerDeleted(customer_id)
            after = None if account.final is None else account.final.period
            current = account.timeline.period_at(after, [h.period for h in account.drafts], now)
            if current is not None:
                effective = current.span.end_ms
        return await self._store.assign_plan(customer_id, plan, effective, now)

    async def plan_views(self, customers: Sequence[Customer],
                         now_ms: int | None = None) -> dict[str, PlanView]:
        """customer id -> its plan now and the pending change. Raises StoreError."""
        now = self._clock() if now_ms is None else now_ms
        async with self._store.billing_snapshot() as snap:
            assignments = await snap.assignments([c.customer_id for c in customers])
        views = {}
        for customer in customers:
            timeline = Timeline(customer, assignments.get(customer.customer_id, ()),
                                self._plans, self._billing.default_plan, self._setup.cycles)
            pending = timeline.pending_change(now)
            views[customer.customer_id] = PlanView(
                timeline.plan_name_at(now), *(pending or (None, None)))
        return views

    # -------------------------------------------------------------- previews

    async def preview(self, customer_id: str, at_ms: int,
                      now_ms: int | None = None) -> Preview | None:
        """The statement of the customer's period containing `at_ms`: the stored one when
        it is final, else computed as a run at `now_ms` (default: the clock) would write it,
        with everything ingested so far. None: no such customer, or no period contains
        `at_ms` (periods after the open one have not begun). Raises StoreError."""
        now = self._clock() if now_ms is None else now_ms
        async with self._store.billing_snapshot() as snap:
            found = await gather.accounts(snap, self._setup, [customer_id])
            if not found:
                return None
            account = found[0]
            if account.final is not None and at_ms < account.final.period.end_ms:
                stored = await snap.statement_at(customer_id, at_ms)
                return None if stored is None else Preview(decode(stored.record), True, True)
            # through the open period at most: later periods have no usage yet
            steps, _ = plan_steps(account, now, self._billing.grace_period_ms, min(at_ms, now))
            index = next((i for i, s in enumerate(steps) if s.period.span.contains(at_ms)), None)
            if index is None:
                return None
            steps = steps[:index + 1]
            cutoff = await snap.watermark()
            earlier = await gather.earlier(snap, [account])
            quantities = await gather.quantities(snap, {customer_id: steps})
        late = earlier[customer_id].late if customer_id in earlier else ()
        records = self._chain(account, steps, quantities.get(customer_id, {}), cutoff, late)
        return Preview(records[-1], False, steps[-1].period.span.end_ms <= now)

    async def open_usage(self, now_ms: int) -> dict[str, dict[str, Decimal]]:
        """meter -> customer -> quantity of each customer's period open at `now_ms`, read
        from the aggregates: one read per distinct open period for all its customers.
        Customers without a plan (no open period) are left out. Raises StoreError."""
        async with self.usage_reader(now_ms) as reader:
            return await reader.quantities()

    @contextlib.asynccontextmanager
    async def usage_reader(self, now_ms: int) -> AsyncIterator[OpenUsageReader]:
        """A reader of the usage of the periods open at `now_ms`, on one store snapshot held
        while the block runs. Raises StoreError.

        Which period is open for whom is kept until one of them ends or the accounts
        change (a customer created or deleted, a plan assigned): a reader then costs two
        cheap reads before its quantities."""
        async with self._store.billing_snapshot() as snap:
            version = await snap.accounts_version()
            known = self._open_periods
            if known is None or not known.holds(version, now_ms):
                known = self._open_periods = await self._find_open_periods(snap, version, now_ms)
            yield OpenUsageReader(snap, self._meters, known, await snap.watermark())

    async def _find_open_periods(self, snap: LedgerSnapshot, version: tuple[int, ...],
                                 now: int) -> OpenPeriods:
        by_span: dict[Period, list[str]] = {}
        until: int | None = None
        for index, account in enumerate(await gather.accounts(snap, self._setup)):
            await _let_others_run(index)
            after = None if account.final is None else account.final.period
            drafts = [h.period for h in account.drafts]
            period = account.timeline.period_at(after, drafts, now)
            if period is not None:
                by_span.setdefault(period.span, []).append(account.customer.customer_id)
                until = _earliest(until, period.span.end_ms)
            until = _earliest(until, account.timeline.next_change(now))
        return OpenPeriods(version, now, until, by_span)

    async def statement_counts(self) -> dict[StatementStatus, int]:
        """Statements stored per status (draft, final). Raises StoreError."""
        return await self._store.statement_counts()


def _write(record: StatementRecord, now: int) -> StatementWrite:
    s = record.statement
    final = s.status == "final"
    head = StatementHead(s.id, s.customer_id, s.period, s.status, s.cutoff_ms, s.plan,
                         dict(s.rollover))
    burned: dict[str, Decimal] = {}
    for burn in s.credit_burns:
        if burn.kind == "grant":
            burned[burn.grant_id] = EXACT.add(burned.get(burn.grant_id, Decimal(0)), burn.credits)
    manual = tuple(m.adjustment_id for m in record.inputs.manual) if final else ()
    return StatementWrite(head, s.currency, s.total_minor, now if final else None,
                          encode(record), tuple(burned.items()), manual)


async def _let_others_run(index: int) -> None:
    """Yield to the event loop every YIELD_EVERY customers: a run over ten thousand customers
    computes for seconds, and the proxy must keep forwarding meanwhile."""
    if index % YIELD_EVERY == YIELD_EVERY - 1:
        await asyncio.sleep(0)


def _earliest(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)
