"""billing/timeline.py: which periods a customer is billed for, under which plan."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.cycles import Cycle, Period
from billing.plans import Plan, Price
from billing.store.base import Customer
from billing.store.ledger import CycleRecord, PlanAssignment
from billing.timeline import BillingPeriod, CycleBook, Timeline
from tests.billing.test_engine_kit import BASIC, DAY, FEB, JAN, PLANS, UTC, WEEKLY

D = Decimal
BY_NAME = {p.name: p for p in PLANS}
TEN = Plan("ten", "USD", Cycle(fixed_ms=10), D(1), (Price("api_calls", D(1)),))
FIFTEEN = Plan("fifteen", "USD", Cycle(fixed_ms=15), None, (Price("api_calls", D(1)),))


def timeline(created: int, assignments: Sequence[tuple[int, str | None]] = (),
             default: str | None = "basic", deleted: int | None = None,
             plans: Mapping[str, Plan] | None = None, records: Sequence[CycleRecord] = ()
             ) -> Timeline:
    customer = Customer("c", created, None, deleted)
    history = [PlanAssignment(at, plan) for at, plan in assignments]
    return Timeline(customer, history, BY_NAME if plans is None else plans, default,
                    CycleBook(records, UTC))


def spans(periods: list[BillingPeriod]) -> list[tuple[str, Period, Period]]:
    return [(p.plan.name, p.span, p.active) for p in periods]


def first(line: Timeline, count: int) -> list[BillingPeriod]:
    walk = line.walk(None)
    return [next(walk) for _ in range(count)]


def test_the_first_period_is_the_whole_cycle_active_from_creation() -> None:
    created = JAN.start_ms + 10 * DAY
    assert spans(first(timeline(created), 2)) == [
        ("basic", JAN, Period(created, JAN.end_ms)), ("basic", FEB, FEB)]


def test_without_a_plan_billing_starts_with_the_first_assignment() -> None:
    assigned = FEB.start_ms + DAY
    line = timeline(JAN.start_ms, [(assigned, "basic")], default=None)
    assert line.plan_at(JAN.start_ms) is None
    assert spans(first(line, 1)) == [("basic", FEB, Period(assigned, FEB.end_ms))]
    assert list(timeline(JAN.start_ms, default=None).walk(None)) == []


def test_a_plan_changes_at_a_period_end_and_a_new_cycle_starts_there() -> None:
    line = timeline(JAN.start_ms, [(JAN.start_ms, "basic"), (FEB.start_ms, "weekly")])
    sunday, monday = FEB.start_ms, FEB.start_ms + DAY  # 2026-02-01 is a Sunday
    periods = first(line, 3)
    assert spans(periods) == [
        ("basic", JAN, JAN),
        ("weekly", Period(sunday, monday), Period(sunday, monday)),
        ("weekly", Period(monday, monday + 7 * DAY), Period(monday, monday + 7 * DAY))]
    assert periods[1].full == Period(monday - 7 * DAY, monday)  # prorated: 1 of 7 days


def test_a_delete_cuts_the_period_and_ends_billing() -> None:
    deleted = FEB.start_ms + 3 * DAY
    line = timeline(JAN.start_ms, deleted=deleted)
    periods = list(line.walk(None))
    assert spans(periods) == [("basic", JAN, JAN),
                              ("basic", Period(FEB.start_ms, deleted),
                               Period(FEB.start_ms, deleted))]
    assert periods[1].full == FEB
    assert line.period_at(None, (), deleted) is None
    assert list(line.walk(periods[1].span)) == []


def test_stored_drafts_keep_their_spans() -> None:
    odd = Period(JAN.start_ms, JAN.start_ms + 5 * DAY)  # e.g. written under another cycle
    walk = timeline(JAN.start_ms).walk(None, [odd])
    assert spans([next(walk), next(walk), next(walk)]) == [
        ("basic", odd, odd), ("basic", Period(odd.end_ms, JAN.end_ms), Period(odd.end_ms,
                                                                              JAN.end_ms)),
        ("basic", FEB, FEB)]


def test_a_new_cycle_applies_from_the_end_of_the_current_period() -> None:
    records = [CycleRecord("ten", 0, "10ms", "UTC"), CycleRecord("ten", 15, "15ms", "UTC")]
    line = timeline(0, default="ten", plans={"ten": TEN}, records=records)
    periods = first(line, 3)
    # [10, 20) began under the 10 ms cycle; the 15 ms cycle starts where it ends
    assert [p.span for p in periods] == [Period(0, 10), Period(10, 20), Period(20, 30)]
    assert periods[2].full == Period(15, 30)


def test_pending_changes_and_plan_names() -> None:
    line = timeline(JAN.start_ms, [(JAN.start_ms, "basic"), (FEB.start_ms, "gone")])
    assert line.pending_change(JAN.start_ms + DAY) == ("gone", FEB.start_ms)
    assert line.plan_name_at(FEB.start_ms) == "gone"
    assert line.plan_at(FEB.start_ms) is None  # no longer configured: not billed
    assert spans(list(line.walk(None))) == [("basic", JAN, JAN)]


# ------------------------------------------------------------------ properties

plan_names = st.sampled_from(["basic", "weekly", "ten", "fifteen", None])


@settings(deadline=None)
@given(created=st.integers(0, 100),
       changes=st.lists(st.tuples(st.integers(0, 300), plan_names), max_size=5),
       deleted=st.one_of(st.none(), st.integers(0, 400)),
       default=plan_names)
def test_periods_never_overlap_and_cover_every_billable_instant(
    created: int, changes: list[tuple[int, str | None]], deleted: int | None,
    default: str | None
) -> None:
    plans = {"ten": TEN, "fifteen": FIFTEEN, "basic": BASIC, "weekly": WEEKLY}
    assignments = sorted(dict(changes).items())
    line = timeline(created, assignments, default=default, deleted=deleted, plans=plans)
    periods: list[BillingPeriod] = []
    for period in line.walk(None):
        if period.span.start_ms > 400:
            break
        periods.append(period)
    for a, b in itertools.pairwise(periods):
        assert a.span.end_ms <= b.span.start_ms  # in order, never overlapping
    for period in periods:
        assert period.active.intersection(period.span) == period.active
        assert period.full.intersection(period.span) == period.span
        assert line.plan_at(period.active.start_ms) == period.plan
    for at in range(created, min(400, deleted if deleted is not None else 400)):
        covering = [p for p in periods if p.span.contains(at)]
        # the first period is its cycle's whole period, so it may start before any plan
        assert len(covering) == 1 if line.plan_at(at) is not None else len(covering) <= 1
