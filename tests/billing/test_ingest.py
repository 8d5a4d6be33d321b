"""Validation of ingest batches: all or nothing, every problem named."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.events import parse_timestamp
from billing.ingest import (
    BatchParser,
    IngestWindow,
    InvalidBatch,
    Issue,
    _FastPath,
    _parse_event,
    decode_json,
    parse_batch,
    storable_body,
    unstorable,
)

NOW = parse_timestamp("2026-11-25T12:00:00Z")
WINDOW = IngestWindow(past_ms=3_600_000, future_ms=300_000)


def event(**overrides: Any) -> dict[str, Any]:
    base = {"event_id": "e1", "customer_id": "acme", "event_name": "api.call"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def issues_of(payload: Any) -> list[tuple[int | None, str]]:
    with pytest.raises(InvalidBatch) as caught:
        parse_batch(payload, NOW, WINDOW)
    return [(i.index, i.field) for i in caught.value.issues]


def test_a_valid_event_gets_defaults() -> None:
    [e] = parse_batch({"events": [event()]}, NOW, WINDOW)
    assert (e.event_id, e.customer_id, e.event_name) == ("e1", "acme", "api.call")
    assert e.timestamp_ms == NOW
    assert e.metadata == {}
    assert e.source == "api"


def test_numbers_stay_exact_and_types_are_kept() -> None:
    payload = decode_json(
        b'{"events": [{"event_id": "e", "customer_id": "c", "event_name": "n",'
        b' "metadata": {"a": 0.1, "b": 12345678901234567890, "c": true,'
        b' "d": "x", "e": 1e3}}]}'
    )
    [e] = parse_batch(payload, NOW, WINDOW)
    assert e.metadata == {
        "a": Decimal("0.1"),
        "b": 12345678901234567890,
        "c": True,
        "d": "x",
        "e": Decimal("1E+3"),
    }
    assert isinstance(e.metadata["a"], Decimal)


@pytest.mark.parametrize(
    ("timestamp", "expected_ms"),
    [
        ("2026-11-25T11:30:00Z", NOW - 1_800_000),
        ("2026-11-25T11:30:00", NOW - 1_800_000),  # no offset: UTC
        ("2026-11-25T13:30:00+02:00", NOW - 1_800_000),
        ("2026-11-25T11:30:00.123999Z", NOW - 1_800_000 + 123),  # sub-ms truncated
        ("2026-11-25T11:00:00Z", NOW - 3_600_000),  # window bounds are inclusive
        ("2026-11-25T12:05:00Z", NOW + 300_000),
        (None, NOW),
    ],
)
def test_timestamps(timestamp: str | None, expected_ms: int) -> None:
    [e] = parse_batch({"events": [event(timestamp=timestamp)]}, NOW, WINDOW)
    assert e.timestamp_ms == expected_ms


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (event(event_id=...), "event_id"),
        (event(event_id=""), "event_id"),
        (event(event_id="x" * 257), "event_id"),
        (event(event_id=5), "event_id"),
        (event(event_id="mp_0190"), "event_id"),
        (event(customer_id="has space"), "customer_id"),
        (event(customer_id="x" * 129), "customer_id"),
        (event(customer_id=...), "customer_id"),
        (event(event_name=""), "event_name"),
        (event(timestamp="yesterday"), "timestamp"),
        (event(timestamp="2026-11-25T10:59:59.999Z"), "timestamp"),
        (event(timestamp="2026-11-25T12:05:00.001Z"), "timestamp"),
        (event(timestamp=1732536000), "timestamp"),
        (event(metadata=[1]), "metadata"),
        (event(metadata={"nested": {"a": 1}}), "metadata.nested"),
        (event(metadata={"list": [1]}), "metadata.list"),
        (event(metadata={"null": None}), "metadata.null"),
        (event(metadata={f"k{i}": i for i in range(51)}), "metadata"),
        (event(metadata={"v": "x" * 501}), "metadata.v"),
        (event(event_id="a\x00b"), "event_id"),
        (event(event_name="n\x00"), "event_name"),
        (event(metadata={"v": "a\x00"}), "metadata.v"),
        (event(metadata={"k\x00": 1}), "metadata.k?"),
        (event(event_name="\ud800"), "event_name"),
        (event(metadata={"v": "a\udfff"}), "metadata.v"),
    ],
)
def test_each_mistake_is_named(bad: dict[str, Any], field: str) -> None:
    assert issues_of({"events": [event(event_id="ok"), bad]}) == [(1, field)]


def test_every_offending_index_is_named() -> None:
    payload = {
        "events": [
            event(event_id="a", customer_id=""),
            event(event_id="b"),
            event(event_id="c", event_name="", timestamp="x"),
        ]
    }
    assert issues_of(payload) == [(0, "customer_id"), (2, "event_name"), (2, "timestamp")]


def test_duplicate_ids_inside_one_batch_are_rejected() -> None:
    assert issues_of({"events": [event(), event(), event()]}) == [(1, "event_id"), (2, "event_id")]


@pytest.mark.parametrize(
    "payload", [{}, {"events": []}, {"events": {}}, [], "x", {"events": [event()] * 1001}]
)
def test_batch_shape(payload: Any) -> None:
    assert issues_of(payload)[0][1] == "events"


@pytest.mark.parametrize("body", [b"{", b'{"events": [NaN]}', b"Infinity", b"[" * 100_000])
def test_invalid_json(body: bytes) -> None:
    with pytest.raises(InvalidBatch):
        decode_json(body)


def test_limits_are_inclusive() -> None:
    metadata = {("k" * 99 + str(i % 10))[:100]: "v" * 500 for i in range(10)}
    metadata.update({f"n{i}": i for i in range(40)})
    [e] = parse_batch(
        {"events": [event(event_id="x" * 256, customer_id="c" * 128, metadata=metadata)]},
        NOW,
        WINDOW,
    )
    assert len(e.metadata) == 50


def test_limits_hold_on_the_fast_path_too() -> None:
    too_many = {f"k{i}": i for i in range(51)}
    for bad in (
        event(metadata=too_many),
        event(metadata={"v": 10**600}),
        event(metadata={"k" * 101: 1}),
    ):
        assert issues_of({"events": [bad]})


_values = st.one_of(
    st.text(max_size=3),
    st.text(min_size=499, max_size=502),
    st.integers(),
    st.booleans(),
    st.none(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.lists(st.integers()),
    st.just("a\x00"),
    st.just("\ud800"),
)
_items = st.one_of(
    _values,
    st.dictionaries(
        st.sampled_from(["event_id", "customer_id", "event_name", "timestamp", "metadata", "x"]),
        st.one_of(
            _values,
            st.sampled_from(
                [
                    "e1",
                    "mp_1",
                    "acme",
                    "api.call",
                    "2026-11-25T11:30:00Z",
                    "2026-11-25T10:00:00Z",
                    "x" * 257,
                ]
            ),
            st.dictionaries(
                st.one_of(st.text(max_size=3), st.just("k" * 101)), _values, max_size=3
            ),
        ),
    ),
)


@settings(max_examples=500, deadline=None)
@given(item=_items)
def test_the_fast_path_accepts_exactly_what_the_full_check_accepts(item: Any) -> None:
    issues: list[Issue] = []
    slow = _parse_event(0, item, NOW, WINDOW, issues)
    fast = _FastPath(NOW, WINDOW, storable_text=False).event(item)
    assert fast == slow
    assert (slow is None) == bool(issues)


def _strings(value: Any) -> list[str]:
    """Every key and string value in a decoded JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


_json_bodies = st.one_of(
    st.recursive(
        st.one_of(st.text(), st.integers(), st.booleans(), st.none()),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    ).flatmap(
        lambda v: st.sampled_from(
            [
                json.dumps(v).encode(),
                json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"),
                json.dumps(v, ensure_ascii=False).encode("utf-16", "surrogatepass"),
            ]
        )
    ),
    st.binary(max_size=40),
)


@settings(max_examples=500, deadline=None)
@given(body=_json_bodies)
def test_a_storable_body_decodes_to_storable_text_only(body: bytes) -> None:
    if not storable_body(body):
        return
    try:
        payload = decode_json(body)
    except InvalidBatch:
        return
    assert not any(unstorable(s) for s in _strings(payload))


@pytest.mark.parametrize(
    "body",
    [
        b'{"events": [{"event_id": "a\\u0000"}]}',
        '{"a": "\u00e9"}'.encode(),
        b'{"a": "\x00"}',
        '{"a": "\udc80"}'.encode("utf-8", "surrogatepass"),
    ],
)
def test_bodies_that_may_hold_unstorable_text_are_not_storable(body: bytes) -> None:
    assert not storable_body(body)


def test_the_fast_path_remembers_a_timestamp_outside_the_window_as_invalid() -> None:
    late = "2026-11-25T10:00:00Z"
    payload = {"events": [event(event_id=f"e{i}", timestamp=late) for i in range(3)]}
    assert issues_of(payload) == [(i, "timestamp") for i in range(3)]


# ------------------------------------------------------------------ slices


def _batch(n: int) -> dict[str, Any]:
    return {"events": [event(event_id=f"e{i}") for i in range(n)]}


@pytest.mark.parametrize(("n", "pauses"), [(1, 0), (BatchParser.SLICE, 0),
                                           (BatchParser.SLICE + 1, 1), (1000, 4)])
def test_a_batch_is_read_in_slices_with_a_pause_between_each(n: int, pauses: int) -> None:
    parser = BatchParser(_batch(n), NOW, WINDOW)
    assert sum(1 for _ in parser.slices()) == pauses
    assert [e.event_id for e in parser.events()] == [f"e{i}" for i in range(n)]


def test_problems_of_every_slice_are_named_together() -> None:
    payload = _batch(1000)
    payload["events"][3]["customer_id"] = "no spaces"
    payload["events"][999]["event_id"] = "e0"  # a duplicate across slices
    parser = BatchParser(payload, NOW, WINDOW)
    for _ in parser.slices():
        pass
    with pytest.raises(InvalidBatch) as caught:
        parser.events()
    assert [(i.index, i.field) for i in caught.value.issues] == [
        (3, "customer_id"), (999, "event_id")
    ]


def test_the_envelope_is_checked_before_any_slice() -> None:
    with pytest.raises(InvalidBatch, match="expected 1 to 1000 events, got 1001"):
        BatchParser(_batch(1001), NOW, WINDOW)


def test_events_before_every_slice_was_read_is_a_programming_error() -> None:
    parser = BatchParser(_batch(BatchParser.SLICE * 2), NOW, WINDOW)
    next(iter(parser.slices()))
    with pytest.raises(RuntimeError, match="before every slice"):
        parser.events()
