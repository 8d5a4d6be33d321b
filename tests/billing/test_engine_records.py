"""billing/records.py and billing/record_codec.py: a statement with its inputs, stored as JSON
and read back exactly."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.credits import CreditGrant, CreditState
from billing.cycles import Period
from billing.pricing import price_line
from billing.record_codec import decode, encode
from billing.records import Inputs, StatementRecord, rate
from billing.statement import LateUsage, ManualAdjustment
from tests.billing.test_engine_kit import DAY, EXAMPLES, FEB, JAN, PLANS, PRO

D = Decimal
amounts = st.decimals(min_value=-10**6, max_value=10**6, places=3)
quantities = st.decimals(min_value=0, max_value=10**13, places=4)


@st.composite
def records(draw: st.DrawFn) -> StatementRecord:
    plan = draw(st.sampled_from(PLANS))
    cut = draw(st.sampled_from([None, JAN.start_ms + draw(st.integers(1, 30)) * DAY]))
    span = JAN if cut is None else Period(JAN.start_ms, cut)
    active = draw(st.sampled_from([span, None, Period(JAN.start_ms + 1, span.end_ms)]))
    late = []
    if draw(st.booleans()):
        price = EXAMPLES.prices[1]
        line, _ = price_line(price, draw(quantities), "USD")
        late.append(LateUsage(Period(0, 10), "USD", price, line, draw(quantities), line.amount))
    grants = tuple(CreditGrant(f"g{i}", price.meter, D(draw(st.integers(1, 10**6))), 0,
                               draw(st.sampled_from([None, FEB.end_ms])), i)
                   for i, price in enumerate(plan.prices))
    inputs = Inputs(
        full=JAN, active=active,
        quantities={p.meter: draw(quantities) for p in plan.prices},
        cutoff_ms=draw(st.integers(0, 2**50)),
        credits=CreditState(grants, {g.grant_id: D(1) for g in grants[:1]},
                            {p.meter: D("2.5") for p in plan.prices[:1]}),
        late=tuple(late) if plan.currency == "USD" else (),
        manual=tuple(ManualAdjustment(f"m{i}", draw(amounts), f"line {i}", i)
                     for i in range(draw(st.integers(0, 2)))),
    )
    return rate("acme", plan, span, inputs, draw(st.sampled_from(["draft", "final"])))


@settings(deadline=None)
@given(records())
def test_a_record_reads_back_exactly(record: StatementRecord) -> None:
    text = encode(record)
    again = decode(text)
    assert again == record
    assert repr(again) == repr(record)  # the same Decimal exponents too ("1.50" stays)
    assert encode(again) == text


def test_a_cut_span_is_priced_on_its_full_period_and_named_by_its_own() -> None:
    cut = Period(JAN.start_ms, JAN.start_ms + 10 * DAY)
    record = rate("acme", PRO, cut, Inputs(full=JAN, active=cut, quantities={}, cutoff_ms=1))
    statement = record.statement
    assert (statement.period, statement.id) == (cut, rate(
        "acme", PRO, cut, Inputs(cut, cut, {}, 1)).statement.id)
    assert str(statement.lines[0].amount) == "15.81"  # 49 x 10/31, not a whole 49


@pytest.mark.parametrize("text", [
    "", "[]", '{"v": 2}', '{"v": 1}', '{"v": 1, "customer_id": 5}',
])
def test_anything_but_a_record_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode(text)


def test_a_damaged_number_is_refused() -> None:
    record = rate("acme", PRO, JAN, Inputs(JAN, JAN, {"api_calls": D(3)}, 1))
    data = json.loads(encode(record))
    data["statement"]["total"] = "a lot"
    with pytest.raises(ValueError):
        decode(json.dumps(data))
