"""billing/meters.py's fast paths: `Meter.number` and `Tally` give what `read` and `fold` give,
digit for digit, while keeping ints as ints."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from billing.events import Metadata, MetadataValue
from billing.meters import (
    AGGREGATION_TYPES,
    Aggregate,
    AggregationType,
    Meter,
    Number,
    Skip,
    Tally,
    as_aggregate,
    fold,
    tally_adder,
)

SUM = Meter("m", "e", "sum", "n")

# Every shape a metadata value takes: ints at and past the 10^18 bound, bools, Decimals with
# every exponent (2 and 2.0 and 2E+0 differ in digits), negative zero, number strings.
values: st.SearchStrategy[MetadataValue] = st.one_of(
    st.integers(-50, 50),
    st.sampled_from([10**18 - 1, -(10**18) + 1, 10**18, -(10**18), 2**62, True, False]),
    st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False),
    st.sampled_from([Decimal("2.0"), Decimal("2"), Decimal("-0"), Decimal("1E+3"),
                     Decimal("-0.00"), Decimal("999999999999999999.999")]),
    st.sampled_from(["7", "-0", "1e2", "2.50", "abc", "", "12_3", "\u0661"]),
)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [({"n": 5}, 5), ({"n": -(10**18) + 1}, -(10**18) + 1), ({"n": 10**18}, Skip("not_numeric")),
     ({"n": True}, Skip("not_numeric")), ({"n": "5"}, Decimal(5)),
     ({"n": Decimal("5.0")}, Decimal("5.0")), ({}, Skip("missing"))],
)
def test_number_keeps_ints_and_skips_as_read_does(metadata: Metadata, expected: object) -> None:
    found = SUM.number(metadata)
    assert found == expected and type(found) is type(expected)


@given(values)
def test_number_is_read_without_the_decimal(value: MetadataValue) -> None:
    for meter in (SUM, Meter("c", "e", "count")):
        fast, read = meter.number({"n": value}), meter.read({"n": value})
        if isinstance(fast, int):
            assert isinstance(read, Decimal) and read == fast and read.as_tuple().exponent == 0
        else:
            assert fast == read and str(fast) == str(read)


def tallied(kind: AggregationType, events: list[tuple[Number, int]]) -> Aggregate | None:
    """The Tally of (value, timestamp) events added with seq 0, 1, 2, ..."""
    if not events:
        return None
    add = tally_adder(kind)
    # A count meter's value is 1 for every event (`Meter.number`), so its tally starts at 1.
    tally = Tally(1 if kind == "count" else events[0][0], events[0][1], 0)
    for seq, (value, ts) in enumerate(events[1:], 1):
        add(tally, value, ts, seq)
    return as_aggregate(tally)  # what the tally shows as an AggregateView, count's value too


def folded(kind: AggregationType, events: list[tuple[Number, int]]) -> Aggregate | None:
    agg = None
    for seq, (value, ts) in enumerate(events):
        agg = fold(kind, agg, Decimal(value), ts, seq)
    return agg


numbers: st.SearchStrategy[Number] = st.one_of(
    st.integers(-(10**18) + 1, 10**18 - 1),
    st.integers(-5, 5),
    st.decimals(min_value=-100, max_value=100, places=2, allow_nan=False),
    st.sampled_from([Decimal("2.0"), Decimal("-0"), Decimal("1E+3"), Decimal("0E-2")]),
)


@settings(deadline=None)
@given(st.sampled_from(AGGREGATION_TYPES),
       st.lists(st.tuples(numbers, st.integers(0, 5)), max_size=40))
# numeric ties that differ in digits: Decimal.max picks by exponent, whatever the order
@example("max", [(Decimal("2.0"), 0), (2, 1)])
@example("max", [(2, 0), (Decimal("2.0"), 1)])
@example("max", [(Decimal("-0"), 0), (0, 1)])
@example("sum", [(Decimal("-0"), 0), (0, 1)])
@example("last", [(1, 5), (2, 5), (3, 4)])
def test_a_tally_is_the_fold_of_its_events_digit_for_digit(
    kind: AggregationType, events: list[tuple[Number, int]]
) -> None:
    fast, slow = tallied(kind, events), folded(kind, events)
    assert fast == slow
    if fast is not None and slow is not None:
        assert (str(fast.value), fast.last_ts, fast.last_seq) == (
            str(slow.value), slow.last_ts, slow.last_seq)


def test_integer_sums_stay_exact_past_64_bits() -> None:
    events: list[tuple[Number, int]] = [(10**18 - 1, 0)] * 20
    tally = tallied("sum", events)
    assert tally is not None and tally.value == Decimal(20 * (10**18 - 1))
