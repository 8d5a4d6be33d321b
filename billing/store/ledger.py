"""The billing half of the store: plan history, credit grants, manual adjustments, statements.

`Ledger` is what the statement engine (billing/engine.py) needs beyond `Store`; `LedgerStore`
is both, the interface every engine implements (SQLite: billing/store/sqlite_ledger.py).
Reads that must agree with each other (aggregates, watermark, statements, credits) go through
one `LedgerSnapshot`, a read transaction: the writer commits whole batches with strictly
increasing `ingested_at`, so "every event with ingested_at <= watermark" is exactly what a
snapshot holds. Statements are stored as an opaque record (billing/records.py encodes it) plus
the columns that the engine and the listings query.

A final statement never changes and its credit burns stay (engines enforce it in the schema
too); a draft is replaced whole, burns included, each time it is recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from billing.credits import CreditGrant, exact_total
from billing.cycles import Period
from billing.statement import ManualAdjustment, StatementStatus
from billing.store.base import Customer, Store


class Conflict(Exception):
    """An idempotent create was retried with different fields (the first one stands)."""


# ------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class PlanAssignment:
    """A customer's plan from `effective_from_ms` on; `plan` None: billing.default_plan."""

    effective_from_ms: int
    plan: str | None


@dataclass(frozen=True, slots=True)
class CycleRecord:
    """A plan's cycle and time zone as configured from `effective_from_ms` on (text forms:
    `Cycle.__str__` and an IANA key)."""

    plan: str
    effective_from_ms: int
    cycle: str
    timezone: str


@dataclass(frozen=True, slots=True)
class StatementHead:
    """What the engine needs of a stored statement to continue a customer's chain."""

    statement_id: str
    customer_id: str
    period: Period
    status: StatementStatus
    cutoff_ms: int
    plan: str
    rollover: Mapping[str, Decimal]


@dataclass(frozen=True, slots=True)
class StoredStatement:
    """A stored statement: its head, when it became final and its encoded record."""

    head: StatementHead
    finalized_at_ms: int | None
    record: str


@dataclass(frozen=True, slots=True)
class Burn:
    """Credits of one API grant burned by the statement of the period starting
    `period_start_ms` (draft or final)."""

    period_start_ms: int
    status: StatementStatus
    grant_id: str
    credits: Decimal


@dataclass(frozen=True, slots=True)
class LateProbe:
    """Look for a customer's events ingested after `after_ms` with a timestamp before
    `before_ms`: usage of final periods that arrived after they became final."""

    customer_id: str
    after_ms: int
    before_ms: int


@dataclass(frozen=True, slots=True)
class StatementWrite:
    """One statement to store. A draft replaces a stored draft with an older or equal cutoff
    (and its burns); a final replaces a draft or is inserted. `manual_ids` are the manual
    adjustments a final statement takes (each is taken once)."""

    head: StatementHead
    currency: str
    total_minor: int
    finalized_at_ms: int | None
    record: str
    burns: tuple[tuple[str, Decimal], ...] = ()
    manual_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CustomerWrite:
    """One customer's statements of one run, written all or nothing.

    `final_head` is the period start of the customer's latest final statement the run saw
    (None: none). When another run has finalised a statement since, the customer is skipped:
    its statements were computed on a chain that no longer holds, and the next run redoes it.
    """

    customer_id: str
    final_head: int | None
    statements: tuple[StatementWrite, ...]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """drafted: drafts created (not recomputed ones); finalized: statements made final;
    skipped: customers left for the next run (see CustomerWrite)."""

    drafted: int = 0
    finalized: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class GrantBalance:
    """An API grant and the credits burned from it by stored statements (drafts included)."""

    grant: CreditGrant
    burned: Decimal


@dataclass(frozen=True, slots=True)
class AdjustmentEntry:
    """A manual adjustment and the statement that took it (None: not yet billed)."""

    adjustment: ManualAdjustment
    statement_id: str | None


@dataclass(frozen=True, slots=True)
class AccountData:
    """What a snapshot holds of some customers: the customers by id, then per customer id
    (absent: nothing of that kind) its plan history (oldest first), its latest final
    statement and every draft (by period start), its API credit grants, their burns
    (drafts' included) and its manual adjustments that no final statement took."""

    customers: list[Customer]
    assignments: dict[str, list[PlanAssignment]]
    heads: dict[str, list[StatementHead]]
    grants: dict[str, list[CreditGrant]]
    burns: dict[str, list[Burn]]
    pending: dict[str, list[ManualAdjustment]]


# --------------------------------------------------------------------- interfaces

Ids = Sequence[str] | None  # customer ids; None: every customer


class LedgerSnapshot(Protocol):
    """Reads from one committed state of the store. Customers absent from a result have
    nothing of that kind."""

    async def watermark(self) -> int:
        """The largest ingested_at_ms in the snapshot (0: no events)."""

    async def accounts(self, ids: Ids = None) -> AccountData:
        """Everything the engine keeps per customer (every customer when `ids` is None)."""

    async def assignments(self, ids: Ids = None) -> dict[str, list[PlanAssignment]]:
        """Each customer's plan history, oldest first."""

    async def accounts_version(self) -> tuple[int, ...]:
        """A value that changes whenever a customer is created or deleted or a plan is
        assigned: what decides customers' periods, besides the time (cheap to read)."""

    async def late_since(self, probes: Sequence[LateProbe]) -> dict[str, int]:
        """customer -> the earliest timestamp of its events matching its probe."""

    async def final_records(self, customer_id: str, ending_after_ms: int) -> list[StoredStatement]:
        """The customer's final statements whose period ends after `ending_after_ms`, by
        period start."""

    async def statement_at(self, customer_id: str, at_ms: int) -> StoredStatement | None:
        """The customer's stored statement whose period contains `at_ms`; None if none."""

    async def quantities(
        self, meters: Sequence[str], customers: Sequence[str], period: Period
    ) -> dict[str, dict[str, Decimal]]:
        """meter -> customer -> quantity over events with timestamp in `period` (from the
        aggregates; raw events at unaligned edges). Customers without usage are absent.
        Raises KeyError for an unknown meter."""


@runtime_checkable
class Ledger(Protocol):
    """Plan history, credits, adjustments and statements. Every method may raise StoreError."""

    def billing_snapshot(self) -> AbstractAsyncContextManager[LedgerSnapshot]:
        """A read transaction for the engine's reads (see LedgerSnapshot)."""

    async def record_cycles(self, current: Sequence[CycleRecord]) -> list[CycleRecord]:
        """Record each plan's cycle and time zone where they differ from the latest record
        of that plan; return every record, oldest first."""

    async def assign_plan(
        self, customer_id: str, plan: str | None, effective_from_ms: int, now_ms: int
    ) -> Customer:
        """Give the customer `plan` from `effective_from_ms` on, replacing assignments that
        start then or later; the customer (created at now_ms if unknown) shows the latest
        plan assigned."""

    async def delete_customer(self, customer_id: str, now_ms: int) -> Customer | None:
        """Mark the customer deleted at now_ms (once: a second call keeps the first time)
        and revoke its keys. None: no such customer."""

    async def add_grant(self, customer_id: str, grant: CreditGrant) -> tuple[CreditGrant, bool]:
        """Store a credit grant; (the stored grant, True when this call created it). A retry
        with the same grant_id returns the first grant; raises Conflict when it differs."""

    async def grant_balances(self, customer_id: str) -> list[GrantBalance]:
        """The customer's grants by creation, with what stored statements burned."""

    async def add_adjustment(
        self, customer_id: str, adjustment: ManualAdjustment
    ) -> tuple[AdjustmentEntry, bool]:
        """Store a manual adjustment, idempotent by adjustment_id like `add_grant`."""

    async def list_adjustments(self, customer_id: str) -> list[AdjustmentEntry]:
        """The customer's manual adjustments by creation."""

    async def write_statements(self, writes: Sequence[CustomerWrite]) -> WriteResult:
        """Store the statements (see StatementWrite and CustomerWrite)."""

    async def get_statement(self, statement_id: str) -> StoredStatement | None:
        """The statement; None if unknown."""

    async def list_statements(
        self,
        *,
        customer_id: str | None,
        status: StatementStatus | None,
        finalized_after_ms: int | None,
        limit: int,
        offset: int = 0,
    ) -> list[StoredStatement]:
        """Statements in order of finalisation (then drafts by period start); None leaves
        a filter out; `finalized_after_ms` keeps final statements finalised after it."""

    async def final_statements(self, after_id: str, limit: int) -> list[StoredStatement]:
        """Final statements with id > after_id, by id: walk them all in pages."""

    async def statement_counts(self) -> dict[StatementStatus, int]:
        """Statements stored per status."""

    async def raw_quantities(
        self, customer_id: str, meters: Sequence[str], period: Period, cutoff_ms: int
    ) -> dict[str, Decimal]:
        """meter -> quantity from the raw events (never the aggregates) with timestamp in
        `period` and ingested_at <= cutoff_ms. Raises KeyError for an unknown meter."""


@runtime_checkable
class LedgerStore(Store, Ledger, Protocol):
    """The whole store interface: events, aggregates, customers, keys and billing."""


# --------------------------------------------------- what both engines' ledgers decide alike


def cycle_definition(
    latest: Mapping[str, CycleRecord], record: CycleRecord
) -> tuple[str, str] | None:
    """The (cycle, timezone) the plan of `record` has now; None for a plan no longer known."""
    known = latest.get(record.plan)
    return None if known is None else (known.cycle, known.timezone)


def grant_fields(grant: CreditGrant) -> tuple[Any, ...]:
    """What a retry must repeat (not created_at: a retry comes later)."""
    return (grant.meter, grant.credits, grant.effective_at_ms, grant.expires_at_ms)


def exact_sum(texts: Sequence[str]) -> Decimal:
    """The exact sum of decimal texts (a grant's burns), never rounded."""
    return exact_total(Decimal(text) for text in texts)


def replaces(stored: tuple[StatementStatus, int] | None, statement: StatementWrite) -> bool:
    """Whether `statement` is written over the stored (status, cutoff), as the upsert's WHERE
    says: nothing stored, or a draft replaced by a final or by a draft at least as recent."""
    if stored is None:
        return True
    status, cutoff = stored
    return status == "draft" and (statement.head.status == "final"
                                  or cutoff <= statement.head.cutoff_ms)
