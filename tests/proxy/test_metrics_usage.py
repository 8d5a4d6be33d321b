"""Folding open-period usage into bounded series: top customers, `__other__`, statements."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.statement import StatementStatus
from proxy.metrics import OTHER
from proxy.usage_metrics import fold_customers, statement_totals, take_snapshot

D = Decimal


@pytest.mark.parametrize(
    ("quantities", "cap", "expected"),
    [
        ({}, 3, []),
        ({"a": D(1)}, 1, [("a", D(1))]),
        ({"a": D(1), "b": D(5), "c": D(3)}, 3, [("b", D(5)), ("c", D(3)), ("a", D(1))]),
        ({"a": D(1), "b": D(5), "c": D(3)}, 2, [("b", D(5)), ("c", D(3)), (OTHER, D(1))]),
        ({"a": D(1), "b": D(5), "c": D(3)}, 1, [("b", D(5)), (OTHER, D(4))]),
        # ties go to the smaller id, so the series do not flap between scrapes
        ({"z": D(2), "y": D(2), "x": D(2)}, 2, [("x", D(2)), ("y", D(2)), (OTHER, D(2))]),
        # exact decimals, negative quantities (a sum meter may go below zero)
        ({"a": D("0.1"), "b": D("0.2"), "c": D("-0.3")}, 1, [("b", D("0.2")), (OTHER, D("-0.2"))]),
        # a customer named __other__ is always folded, never shown as one customer
        ({OTHER: D(9), "a": D(1)}, 5, [("a", D(1)), (OTHER, D(9))]),
    ],
)
def test_fold_customers(
    quantities: dict[str, Decimal], cap: int, expected: list[tuple[str, Decimal]]
) -> None:
    assert fold_customers(quantities, cap) == expected


customer_ids = st.text("abcdefghij_", min_size=1, max_size=4)
amounts = st.decimals(min_value=-1000, max_value=10**6, places=3, allow_nan=False)


@settings(deadline=None)
@given(st.dictionaries(customer_ids, amounts, max_size=40), st.integers(1, 10))
def test_folding_keeps_the_total_and_the_largest(quantities: dict[str, Decimal], cap: int) -> None:
    folded = fold_customers(quantities, cap)
    assert sum((q for _, q in folded), D(0)) == sum(quantities.values(), D(0))
    shown = [(c, q) for c, q in folded if c != OTHER]
    assert len(shown) == min(cap, len(quantities))
    assert [q for _, q in shown] == sorted((q for _, q in shown), reverse=True)
    hidden = set(quantities) - {c for c, _ in shown}
    assert all(quantities[h] <= q for h in hidden for _, q in shown)
    assert (OTHER in dict(folded)) == bool(hidden)
    assert len(folded) <= cap + 1


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({}, (("draft", 0), ("final", 0))),
        ({"draft": 3}, (("draft", 3), ("final", 0))),
        ({"draft": 2, "final": 5}, (("draft", 7), ("final", 5))),
    ],
)
def test_statement_totals_count_every_statement_as_drafted(
    counts: dict[StatementStatus, int], expected: tuple[tuple[str, int], ...]
) -> None:
    assert statement_totals(counts) == expected


def test_snapshot_has_a_total_for_every_meter_and_customers_only_when_asked() -> None:
    usage = {"calls": {"a": D(2), "b": D(3), "c": D(1)}, "unknown_meter": {"a": D(7)}}
    without = take_snapshot(["calls", "bytes"], usage, {}, max_customers=None)
    assert without.totals == (("calls", D(6)), ("bytes", D(0)))
    assert without.customers == ()
    folded = take_snapshot(["calls", "bytes"], usage, {}, max_customers=1)
    assert folded.totals == without.totals
    assert folded.customers == (("calls", "b", D(3)), ("calls", OTHER, D(3)))
