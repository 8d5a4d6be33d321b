"""bench/stats.py: medians, ranges and per-round pairing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.stats import Spread, paired_differences, paired_ratios, percentile, spread

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([5.0], Spread(5.0, 5.0, 5.0)),
        ([3.0, 1.0, 2.0], Spread(2.0, 1.0, 3.0)),
        ([1.0, 2.0, 3.0, 10.0], Spread(2.5, 1.0, 10.0)),
    ],
)
def test_spread(values: list[float], expected: Spread) -> None:
    assert spread(values) == expected


@pytest.mark.parametrize(
    ("value", "digits", "signed", "text"),
    [
        (Spread(1234.5, 1234.5, 1234.5), 1, False, "1,234.5"),
        (Spread(0.9, 0.8, 1.0), 2, False, "0.90 (0.80 to 1.00)"),
        (Spread(12.0, -3.0, 40.0), 0, True, "+12 (-3 to +40)"),
    ],
)
def test_render(value: Spread, digits: int, signed: bool, text: str) -> None:
    assert value.render(digits, signed=signed) == text


def test_pairs_are_taken_round_by_round() -> None:
    # Round 2 was slow for both: per-round ratios are 0.5 each, unlike the ratio of medians.
    assert paired_ratios([50.0, 5.0, 50.0], [100.0, 10.0, 100.0]) == Spread(0.5, 0.5, 0.5)
    assert paired_differences([110.0, 30.0], [100.0, 10.0]) == Spread(15.0, 10.0, 20.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: spread([]),
        lambda: paired_ratios([1.0], [1.0, 2.0]),
        lambda: paired_ratios([1.0], [0.0]),
        lambda: paired_differences([1.0, 2.0], [1.0]),
        lambda: percentile([], 50),
        lambda: percentile([1.0], 0),
        lambda: percentile([1.0], 101),
    ],
)
def test_refusals(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("q", "expected"), [(1, 1.0), (50, 50.0), (99, 99.0), (99.5, 100.0), (100, 100.0)]
)
def test_percentile_nearest_rank(q: float, expected: float) -> None:
    assert percentile([float(v) for v in range(100, 0, -1)], q) == expected


@given(st.lists(finite, min_size=1))
def test_median_lies_within_the_range(values: list[float]) -> None:
    s = spread(values)
    assert s.low <= s.median <= s.high
    assert (s.low, s.high) == (min(values), max(values))


@given(st.lists(finite, min_size=1), st.floats(min_value=0.01, max_value=100), st.data())
def test_percentile_is_a_member_and_monotonic(
    values: list[float], q: float, data: st.DataObject
) -> None:
    higher = data.draw(st.floats(min_value=q, max_value=100))
    assert percentile(values, q) in values
    assert percentile(values, q) <= percentile(values, higher)


@given(st.lists(st.floats(min_value=0.001, max_value=1e6), min_size=1))
def test_a_target_against_itself_is_one_and_zero(values: list[float]) -> None:
    assert paired_ratios(values, values) == Spread(1.0, 1.0, 1.0)
    assert paired_differences(values, values) == Spread(0.0, 0.0, 0.0)
