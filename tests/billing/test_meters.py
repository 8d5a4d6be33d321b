"""billing/meters.py: reading events, folding and merging aggregates, parsing `meters:`."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.events import Metadata
from billing.meters import (
    AGGREGATION_TYPES,
    Aggregate,
    AggregationType,
    Meter,
    Skip,
    fold,
    merge,
    parse_meters,
    quantity,
)
from billing.settings import Problems, Section

REFERENCE_METERS = yaml.safe_load("""
meters:
  - name: api_calls
    event_name: api.call
    aggregation: {type: count}
    measurement_unit: calls
  - name: hd_images
    event_name: image.generated
    aggregation: {type: sum, key: images}
    filter:
      conjunction: and
      clauses:
        - {key: quality, operator: equals, value: hd}
    measurement_unit: images
  - name: standard_images
    event_name: image.generated
    aggregation: {type: sum, key: images}
    filter:
      conjunction: or
      clauses:
        - {key: quality, operator: equals, value: standard}
        - {key: quality, operator: does_not_contain, value: hd}
  - name: output_tokens
    event_name: llm.tokens
    aggregation: {type: sum, key: output_tokens}
    measurement_unit: tokens
  - name: egress_bytes
    event_name: bandwidth
    aggregation: {type: sum, key: bytes}
    measurement_unit: bytes
  - name: peak_seats
    event_name: seats.reported
    aggregation: {type: max, key: seats}
  - name: storage_gb
    event_name: storage.snapshot
    aggregation: {type: last, key: gb}
""")


def parsed(data: dict[str, Any]) -> tuple[tuple[Meter, ...], list[str]]:
    problems = Problems()
    meters = parse_meters(Section(data, "", problems))
    return meters, [f"{p.path}: {p.message}" for p in problems.errors]


def reference() -> dict[str, Meter]:
    meters, errors = parsed(REFERENCE_METERS)
    assert errors == []
    return {meter.name: meter for meter in meters}


def folded(kind: AggregationType, events: list[tuple[Decimal, int, int]]) -> Aggregate | None:
    agg = None
    for value, ts, seq in events:
        agg = fold(kind, agg, value, ts, seq)
    return agg


# ------------------------------------------------------------------ reading


def test_reference_meters_parse() -> None:
    meters = reference()
    assert list(meters) == ["api_calls", "hd_images", "standard_images", "output_tokens",
                            "egress_bytes", "peak_seats", "storage_gb"]
    assert meters["peak_seats"] == Meter("peak_seats", "seats.reported", "max", "seats")
    assert meters["api_calls"].key is None and meters["api_calls"].measurement_unit == "calls"


@pytest.mark.parametrize(
    ("meter", "metadata", "read"),
    [
        ("api_calls", {}, Decimal(1)),
        ("egress_bytes", {"bytes": 1500}, Decimal(1500)),
        ("egress_bytes", {"bytes": "1.5e3"}, Decimal(1500)),
        ("egress_bytes", {}, Skip("missing")),
        ("egress_bytes", {"bytes": "lots"}, Skip("not_numeric")),
        ("egress_bytes", {"bytes": True}, Skip("not_numeric")),
        ("egress_bytes", {"bytes": "1e18"}, Skip("not_numeric")),
        ("hd_images", {"quality": "hd", "images": 2}, Decimal(2)),
        ("hd_images", {"quality": "standard", "images": 2}, None),  # filtered out
        ("hd_images", {"images": 2}, None),  # a missing filter key does not match
        ("hd_images", {"quality": "hd"}, Skip("missing")),
        ("standard_images", {"quality": "low", "images": "3"}, Decimal(3)),
    ],
)
def test_read(meter: str, metadata: Metadata, read: Decimal | Skip | None) -> None:
    assert reference()[meter].read(metadata) == read


def test_a_meter_refuses_a_key_that_does_not_fit_its_type() -> None:
    with pytest.raises(ValueError):
        Meter("m", "e", "count", "n")
    with pytest.raises(ValueError):
        Meter("m", "e", "sum")


def test_a_code_built_predicate_works_as_a_filter() -> None:
    def big(metadata: Metadata) -> bool:
        return metadata.get("size") == "big"

    meter = Meter("m", "e", "count", filter=big)
    assert meter.read({"size": "big"}) == 1 and meter.read({"size": "small"}) is None
    assert meter.to_json()["filter"] == {"predicate": f"{__name__}.{big.__qualname__}"}


# -------------------------------------------------------- fingerprint and json


def test_to_json_uses_dodo_field_names() -> None:
    assert reference()["hd_images"].to_json() == {
        "name": "hd_images",
        "event_name": "image.generated",
        "aggregation": {"type": "sum", "key": "images"},
        "filter": {"conjunction": "and",
                   "clauses": [{"key": "quality", "operator": "equals", "value": "hd"}]},
        "measurement_unit": "images",
    }
    assert reference()["api_calls"].to_json()["aggregation"] == {"type": "count", "key": None}


def with_filter_value(value: object) -> Meter:
    meters, errors = parsed({"meters": [{
        "name": "m", "event_name": "e", "aggregation": {"type": "sum", "key": "n"},
        "filter": {"conjunction": "and",
                   "clauses": [{"key": "k", "operator": "equals", "value": value}]},
    }]})
    assert errors == []
    return meters[0]


def test_fingerprint_is_stable_and_follows_what_decides_aggregates() -> None:
    base = Meter("m", "e", "sum", "n")
    assert base.fingerprint() == Meter("m", "e", "sum", "n").fingerprint()
    assert len(base.fingerprint()) == 64
    # neither the name nor the unit changes what is aggregated
    assert Meter("renamed", "e", "sum", "n", measurement_unit="x").fingerprint() == \
        base.fingerprint()
    changed = [Meter("m", "e2", "sum", "n"), Meter("m", "e", "max", "n"),
               Meter("m", "e", "sum", "k"), with_filter_value(5)]
    assert len({m.fingerprint() for m in [base, *changed]}) == 5
    # the number 5 and the string "5" are different definitions
    assert with_filter_value(5).fingerprint() != with_filter_value("5").fingerprint()
    assert with_filter_value(Decimal("5")).fingerprint() != with_filter_value("5").fingerprint()


# --------------------------------------------------------------- aggregation


def test_worked_examples_aggregate_exactly() -> None:
    seats = [(Decimal(15), 1, 1), (Decimal(23), 2, 2), (Decimal(18), 3, 3)]
    assert quantity("max", folded("max", seats)) == 23
    snapshots = [(Decimal(40), 10, 1), (Decimal(55), 20, 2), (Decimal(30), 30, 3)]
    assert quantity("last", folded("last", snapshots)) == 30
    calls = [(Decimal(1), ts, ts) for ts in range(2_500)]
    assert quantity("count", folded("count", calls)) == 2_500


def test_last_follows_the_timestamp_then_the_store_sequence() -> None:
    # ingested out of order: the latest timestamp wins, not the latest ingested
    late_arrival = [(Decimal(30), 30, 1), (Decimal(55), 20, 2), (Decimal(40), 10, 3)]
    assert quantity("last", folded("last", late_arrival)) == 30
    same_ms = [(Decimal(7), 5, 9), (Decimal(8), 5, 4)]
    assert quantity("last", folded("last", same_ms)) == 7


def test_a_million_tenths_sum_to_exactly_one_hundred_thousand() -> None:
    tenth, agg = Decimal("0.1"), None
    for seq in range(1_000_000):
        agg = fold("sum", agg, tenth, seq, seq)
    assert agg is not None and agg.count == 1_000_000
    assert quantity("sum", agg) == Decimal(100_000)


def test_sums_stay_exact_beyond_28_digits() -> None:
    values = [Decimal("999999999999999999.000000000001")] * 3
    agg = folded("sum", [(v, i, i) for i, v in enumerate(values)])
    assert quantity("sum", agg) == Decimal("2999999999999999997.000000000003")


@pytest.mark.parametrize("kind", AGGREGATION_TYPES)
def test_a_span_without_events_is_zero(kind: AggregationType) -> None:
    assert quantity(kind, None) == 0
    assert merge(kind, None, None) is None


# ---------------------------------------------------------------- properties

event_lists = st.lists(
    st.tuples(st.decimals(min_value=-1000, max_value=1000, places=3),
              st.integers(min_value=0, max_value=50)),
    min_size=1, max_size=30,
).map(lambda pairs: [(value, ts, seq) for seq, (value, ts) in enumerate(pairs)])


@settings(deadline=None)
@given(event_lists, st.randoms(use_true_random=False))
def test_event_order_never_changes_count_sum_max(events: list[tuple[Decimal, int, int]],
                                                rnd: random.Random) -> None:
    shuffled = events[:]
    rnd.shuffle(shuffled)
    for kind in ("count", "sum", "max"):
        a, b = folded(kind, events), folded(kind, shuffled)
        assert a == b
        assert a is not None and b is not None
        assert str(a.value) == str(b.value)  # same digits too, not only the same number


@settings(deadline=None)
@given(event_lists, st.randoms(use_true_random=False))
def test_last_is_the_value_of_the_latest_timestamp_then_sequence(
    events: list[tuple[Decimal, int, int]], rnd: random.Random
) -> None:
    shuffled = events[:]
    rnd.shuffle(shuffled)
    latest = max(events, key=lambda event: (event[1], event[2]))
    agg = folded("last", shuffled)
    assert agg is not None
    assert quantity("last", agg) == latest[0]
    assert (agg.last_ts, agg.last_seq) == (latest[1], latest[2])


@settings(deadline=None)
@given(st.sampled_from(AGGREGATION_TYPES), event_lists, st.randoms(use_true_random=False))
def test_buckets_merge_to_the_fold_of_all_events(
    kind: AggregationType, events: list[tuple[Decimal, int, int]], rnd: random.Random
) -> None:
    cuts = sorted(rnd.sample(range(len(events) + 1), k=min(3, len(events) + 1)))
    buckets = [folded(kind, events[a:b]) for a, b in zip([0, *cuts], [*cuts, len(events)],
                                                         strict=True)]
    rnd.shuffle(buckets)
    total = None
    for bucket in buckets:
        total = merge(kind, total, bucket) if rnd.random() < 0.5 else merge(kind, bucket, total)
    assert total == folded(kind, events)


aggregates = st.builds(
    Aggregate, st.integers(1, 100), st.decimals(min_value=-100, max_value=100, places=2),
    st.integers(0, 5), st.integers(0, 5),
)


@settings(deadline=None)
@given(st.sampled_from(AGGREGATION_TYPES), aggregates, aggregates, aggregates)
def test_merge_is_associative_and_commutative(kind: AggregationType, a: Aggregate,
                                              b: Aggregate, c: Aggregate) -> None:
    assert merge(kind, a, b) == merge(kind, b, a)
    assert merge(kind, merge(kind, a, b), c) == merge(kind, a, merge(kind, b, c))


@settings(deadline=None)
@given(st.sampled_from(AGGREGATION_TYPES), aggregates,
       st.decimals(min_value=-100, max_value=100, places=2), st.integers(0, 5),
       st.integers(0, 5))
def test_fold_is_merge_with_one_event(kind: AggregationType, agg: Aggregate, value: Decimal,
                                      ts: int, seq: int) -> None:
    if kind == "count":
        agg = Aggregate(agg.count, Decimal(agg.count), agg.last_ts, agg.last_seq)
    one = Aggregate(1, Decimal(1) if kind == "count" else value, ts, seq)
    assert fold(kind, agg, value, ts, seq) == merge(kind, agg, one)


# ------------------------------------------------------------------- parsing


def meter_errors(meter: dict[str, Any], *more: dict[str, Any]) -> list[str]:
    return parsed({"meters": [meter, *more]})[1]


GOOD = {"name": "m", "event_name": "e", "aggregation": {"type": "sum", "key": "n"}}


@pytest.mark.parametrize(
    ("meter", "error"),
    [
        ({**GOOD, "aggregation": {"type": "sum"}},
         "meters[0].aggregation.key: required for type sum"),
        ({**GOOD, "aggregation": {"type": "last"}},
         "meters[0].aggregation.key: required for type last"),
        ({**GOOD, "aggregation": {"type": "count", "key": "n"}},
         "meters[0].aggregation.key: not allowed for type count (it counts events)"),
        ({**GOOD, "aggregation": {"type": "avg", "key": "n"}},
         "meters[0].aggregation.type: must be one of count, sum, max, last, got 'avg'"),
        ({**GOOD, "aggregation": {"type": "sum", "key": "n", "keys": "x"}},
         "meters[0].aggregation.keys: unknown key"),
        ({"name": "m", "event_name": "e"}, "meters[0].aggregation: required (e.g. {type: count})"),
        ({**GOOD, "event_name": None}, "meters[0].event_name: required"),
        ({**GOOD, "event_name": ""}, "meters[0].event_name: must not be empty"),
        ({**GOOD, "name": "api calls"},
         "meters[0].name: use 1-100 letters, digits, '_', '.', ':' or '-', starting with a "
         "letter or digit; got 'api calls'"),
        ({**GOOD, "unit": "x"}, "meters[0].unit: unknown key"),
        ({**GOOD, "filter": {"conjunction": "and",
                             "clauses": [{"key": "k", "operator": "like", "value": 1}]}},
         "meters[0].filter.clauses[0].operator: must be one of equals, not_equals, "
         "greater_than, greater_than_or_equals, less_than, less_than_or_equals, contains, "
         "does_not_contain, got 'like'"),
    ],
)
def test_parse_errors_name_the_culprit(meter: dict[str, Any], error: str) -> None:
    assert error in meter_errors(meter)


def test_a_faulty_meter_is_left_out_and_the_others_kept() -> None:
    meters, errors = parsed({"meters": [GOOD, {**GOOD, "name": "x", "aggregation": {}}]})
    assert [m.name for m in meters] == ["m"]
    assert errors == ["meters[1].aggregation.type: required"]


def test_duplicate_names_are_an_error() -> None:
    assert meter_errors(GOOD, {**GOOD, "event_name": "other"}) == [
        "meters[1].name: duplicate meter name 'm' (first at meters[0])"]


def test_no_meters_is_fine() -> None:
    assert parsed({}) == ((), [])
