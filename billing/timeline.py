"""Which periods a customer is billed for, and under which plan.

A customer is billed from the period containing the first instant at which it has a plan
(its creation, or a later assignment when it had none), one period after the other, until
a DELETE ends its current period early. The plan of a period is the one in force at its
start (changes are recorded at period ends); its cycle and time zone are the ones configured
at its start (`CycleBook`), so a new cycle starts at the end of the current period and
periods never overlap. The first period is the cycle's whole period (usage in it counts) with
the fixed price prorated from the start of billing; a period that a DELETE or a plan change
cut short is prorated against its cycle's whole period too.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from billing.cycles import Cycle, Period, period_containing
from billing.plans import Plan
from billing.store.base import Customer
from billing.store.ledger import CycleRecord, PlanAssignment


@dataclass(frozen=True, slots=True)
class BillingPeriod:
    """One period of a customer: billed over `span`, priced with `plan`; `full` is the
    cycle's whole period (the base of proration) and `active` the part of the span in which
    the customer was billable."""

    plan: Plan
    span: Period
    full: Period
    active: Period


class CycleBook:
    """Each plan's cycle and time zone over time, from the recorded `CycleRecord`s.

    Before a plan's first record (and for a plan without records) its earliest known
    definition applies, else the configured one.
    """

    def __init__(self, records: Sequence[CycleRecord], timezone: ZoneInfo) -> None:
        self._timezone = timezone
        self._by_plan: dict[str, list[tuple[int, Cycle, ZoneInfo]]] = {}
        for r in sorted(records, key=lambda r: r.effective_from_ms):
            self._by_plan.setdefault(r.plan, []).append(
                (r.effective_from_ms, Cycle.parse(r.cycle), ZoneInfo(r.timezone)))

    def at(self, plan: Plan, at_ms: int) -> tuple[Cycle, ZoneInfo]:
        """The cycle and zone of `plan` in force at `at_ms`."""
        history = self._by_plan.get(plan.name)
        if not history:
            return plan.cycle, self._timezone
        index = bisect.bisect_right(history, at_ms, key=lambda entry: entry[0]) - 1
        _, cycle, zone = history[max(index, 0)]
        return cycle, zone


class Timeline:
    """The billing periods of one customer (see the module docstring).

    `assignments`: the customer's plan history, oldest first; `plans`: the configured plans
    by name (an assignment naming a plan that is no longer configured leaves the customer
    without a plan until the next assignment).
    """

    def __init__(self, customer: Customer, assignments: Sequence[PlanAssignment],
                 plans: Mapping[str, Plan], default_plan: str | None, cycles: CycleBook) -> None:
        self.customer = customer
        self._changes = [a.effective_from_ms for a in assignments]
        self._names = [a.plan or default_plan for a in assignments]
        self._plans = plans
        self._default = default_plan
        self._cycles = cycles
        self._start = self._billable_from(customer.created_at_ms)

    def plan_at(self, at_ms: int) -> Plan | None:
        """The plan in force at `at_ms`; None when the customer has none then."""
        name = self.plan_name_at(at_ms)
        return None if name is None else self._plans.get(name)

    def plan_name_at(self, at_ms: int) -> str | None:
        """The name of the plan assigned for `at_ms` (configured or not); None: none."""
        index = bisect.bisect_right(self._changes, at_ms) - 1
        return self._names[index] if index >= 0 else self._default

    def next_change(self, now_ms: int) -> int | None:
        """When the next assigned plan change takes effect after `now_ms`; None: none."""
        index = bisect.bisect_right(self._changes, now_ms)
        return self._changes[index] if index < len(self._changes) else None

    def pending_change(self, now_ms: int) -> tuple[str | None, int] | None:
        """(plan name, from) of the first assigned change after `now_ms`; None: none."""
        current = self.plan_name_at(now_ms)
        for change, name in zip(self._changes, self._names, strict=True):
            if change > now_ms and name != current:
                return name, change
        return None

    def walk(self, after: Period | None, drafts: Sequence[Period] = ()) -> Iterator[BillingPeriod]:
        """The periods after the stored span `after` (None: from the first), in order, with
        no end: the caller stops. Stored `drafts` keep their spans; computed periods are
        cut where one starts."""
        pending = deque(sorted(drafts))
        start = self._start if after is None else after.end_ms
        first = after is None
        while True:
            if pending and (start is None or pending[0].start_ms <= start):
                span = pending.popleft()
                start = span.end_ms
                if (period := self.period_of(span)) is not None:
                    yield period
            else:
                start = None if start is None else self._billable_from(start)
                limit = pending[0].start_ms if pending else None
                period = None if start is None else self._period_from(start, first, limit)
                if period is None:
                    return
                yield period
                start = period.span.end_ms
            first = False

    def period_at(self, after: Period | None, drafts: Sequence[Period],
                  at_ms: int) -> BillingPeriod | None:
        """The period containing `at_ms` among `walk(after, drafts)`; None when `at_ms`
        falls before it, in a gap without a plan, or after a DELETE."""
        for period in self.walk(after, drafts):
            if period.span.start_ms > at_ms:
                return None
            if at_ms < period.span.end_ms:
                return period
        return None

    def period_of(self, span: Period) -> BillingPeriod | None:
        """The billing period of a stored span (a draft keeps its bounds while its plan
        may be repriced); None when no plan is in force in it any more."""
        if self._start is None or self._start >= span.end_ms:
            return None
        active = Period(max(span.start_ms, self._start), span.end_ms)
        plan = self.plan_at(active.start_ms)
        if plan is None:
            return None
        full = self._full(plan, active.start_ms)
        if full.intersection(span) != span:  # the cycle changed under a stored draft
            full = span
        return BillingPeriod(plan, span, full, active)

    def _period_from(self, start_ms: int, first: bool,
                     limit_ms: int | None) -> BillingPeriod | None:
        plan = self.plan_at(start_ms)
        if plan is None:
            return None
        full = self._full(plan, start_ms)
        end = min(full.end_ms, self._next_change(start_ms, full.end_ms))
        if limit_ms is not None:
            end = min(end, limit_ms)
        deleted = self.customer.deleted_at_ms
        if deleted is not None:
            if deleted <= start_ms:
                return None
            end = min(end, deleted)
        span = Period(full.start_ms if first else start_ms, end)
        return BillingPeriod(plan, span, full, Period(start_ms, end))

    def _full(self, plan: Plan, at_ms: int) -> Period:
        cycle, zone = self._cycles.at(plan, at_ms)
        return period_containing(cycle, zone, at_ms)

    def _next_change(self, after_ms: int, default: int) -> int:
        """The first plan change after `after_ms`; `default` when there is none."""
        index = bisect.bisect_right(self._changes, after_ms)
        return self._changes[index] if index < len(self._changes) else default

    def _billable_from(self, at_ms: int) -> int | None:
        """The first instant at or after `at_ms` with a plan; None: never (or deleted)."""
        candidates = [at_ms, *(c for c in self._changes if c > at_ms)]
        deleted = self.customer.deleted_at_ms
        for candidate in candidates:
            if deleted is not None and candidate >= deleted:
                return None
            if self.plan_at(candidate) is not None:
                return candidate
        return None
