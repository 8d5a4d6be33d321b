"""Meters: which events count, what value each contributes, and how values combine.

`Meter.read` turns one event's metadata into a value (the hot path: called for every
stored event). `fold` adds one value to an `Aggregate`; `merge` combines the aggregates
of two spans (e.g. hourly buckets), associatively and commutatively, so a period's
quantity can be read from stored buckets without scanning events. Quantities are exact
decimals: sums use `money.EXACT`, never the 28-digit default context.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol, get_args

from billing.events import Metadata
from billing.filters import Filter, Predicate, parse_filter, parse_number
from billing.money import EXACT
from billing.settings import Section

__all__ = [
    "AGGREGATION_TYPES", "Aggregate", "AggregateView", "AggregationType", "Meter", "Number",
    "Skip", "Tally", "as_aggregate", "fold", "merge", "parse_meters", "parse_number",
    "quantity", "tally_adder",
]

AggregationType = Literal["count", "sum", "max", "last"]
Number = int | Decimal  # an exact quantity; int on the fast path (most usage values are ints)
AGGREGATION_TYPES: tuple[AggregationType, ...] = get_args(AggregationType)
SkipReason = Literal["missing", "not_numeric"]

_ONE = Decimal(1)
_ZERO = Decimal(0)
_INT_LIMIT = 10**18  # parse_number's bound, for ints that skip it
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
# Bump when the meaning of a definition changes (e.g. the number rule), so stores
# rebuild aggregates that were computed under the old meaning.
_FINGERPRINT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Skip:
    """An event of the meter left out of it: its key is missing or not a number."""

    reason: SkipReason


SKIP_MISSING = Skip("missing")
SKIP_NOT_NUMERIC = Skip("not_numeric")


@dataclass(frozen=True, slots=True)
class Meter:
    """One meter of the configuration. Raises ValueError when `key` does not fit the type
    (count takes none, the others need one).

    `filter` is a compiled `Filter` when read from the configuration; any predicate
    over metadata works (code-built meters), and is then known by its qualified name.
    """

    name: str
    event_name: str
    aggregation: AggregationType
    key: str | None = None
    filter: Predicate | None = None
    measurement_unit: str | None = None

    def __post_init__(self) -> None:
        if (self.aggregation == "count") != (self.key is None):
            raise ValueError(f"meter {self.name}: count takes no key, {self.aggregation} needs one")

    def read(self, metadata: Metadata) -> Decimal | Skip | None:
        """What an event of `event_name` contributes (the caller checked the name).

        None: the filter leaves the event out (not counted anywhere). A `Skip`: the
        event belongs to the meter but has no usable value (count it as skipped).
        Otherwise the value: 1 for count, the key's number for the other types.
        """
        value = self.number(metadata)
        return Decimal(value) if isinstance(value, int) else value

    def number(self, metadata: Metadata) -> Number | Skip | None:
        """`read` without building a Decimal for an int value (the event writer's fast path):
        the same None, Skip or number, an int where the metadata holds an int."""
        if self.filter is not None and not self.filter(metadata):
            return None
        if self.key is None:
            return 1
        value = metadata.get(self.key)
        if value is None:
            return SKIP_MISSING
        if type(value) is int:  # exactly int: a bool is not a number
            return value if -_INT_LIMIT < value < _INT_LIMIT else SKIP_NOT_NUMERIC
        number = parse_number(value)
        return SKIP_NOT_NUMERIC if number is None else number

    def fingerprint(self) -> str:
        """A stable hash of what decides the meter's aggregates (event_name, aggregation,
        key, filter; not the name or measurement_unit). A store that finds a different
        fingerprint than it built its aggregates with must rebuild them."""
        definition = {
            "version": _FINGERPRINT_VERSION,
            "event_name": self.event_name,
            "aggregation": {"type": self.aggregation, "key": self.key},
            "filter": self._filter_json(),
        }
        text = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=_typed)
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The configuration as Dodo Payments' meter API names it (filter values keep
        their type: str, int, bool or Decimal, for a Decimal-aware JSON encoder)."""
        return {
            "name": self.name,
            "event_name": self.event_name,
            "aggregation": {"type": self.aggregation, "key": self.key},
            "filter": self._filter_json(),
            "measurement_unit": self.measurement_unit,
        }

    def _filter_json(self) -> dict[str, Any] | None:
        if self.filter is None:
            return None
        if isinstance(self.filter, Filter):
            return self.filter.to_json()
        return {"predicate": f"{self.filter.__module__}.{self.filter.__qualname__}"}


def _typed(value: object) -> object:
    # Keeps the number 5 and the string "5" apart in fingerprints.
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


# ---------------------------------------------------------------- aggregates


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The state of one meter for one customer over a span of events.

    `count` events were included; `value` is the quantity (the count itself for count);
    (`last_ts`, `last_seq`) is the latest event by timestamp, then store sequence.
    """

    count: int
    value: Decimal
    last_ts: int
    last_seq: int


def fold(kind: AggregationType, agg: Aggregate | None, value: Decimal, ts_ms: int,
         seq: int) -> Aggregate:
    """`agg` (None: no events yet) with one more event of value `value` added.

    Equal to `merge` with a one-event aggregate, written out because the event writer
    calls it for every stored event.
    """
    if agg is None:
        return Aggregate(1, _ONE if kind == "count" else value, ts_ms, seq)
    count = agg.count + 1
    if ts_ms != agg.last_ts:
        newer = ts_ms > agg.last_ts
    elif seq != agg.last_seq:
        newer = seq > agg.last_seq
    else:  # a full tie, broken as `merge` breaks it
        newer = value.compare_total(agg.value) > 0
    if kind == "count":
        value = Decimal(count)
    elif kind == "sum":
        value = EXACT.add(agg.value, value)
    elif kind == "max":
        value = EXACT.max(agg.value, value)
    elif not newer:
        value = agg.value
    if newer:
        return Aggregate(count, value, ts_ms, seq)
    return Aggregate(count, value, agg.last_ts, agg.last_seq)


def merge(kind: AggregationType, a: Aggregate | None, b: Aggregate | None) -> Aggregate | None:
    """The aggregate of two disjoint spans; None only when both are None.

    Associative and commutative, so buckets may be combined in any grouping and order.
    """
    if a is None:
        return b
    if b is None:
        return a
    later = _later(a, b)
    count = a.count + b.count
    if kind == "count":
        value = Decimal(count)
    elif kind == "sum":
        value = EXACT.add(a.value, b.value)
    elif kind == "max":
        # Decimal.max breaks numeric ties by exponent, so 2 vs 2.0 does not
        # depend on the order of the events.
        value = EXACT.max(a.value, b.value)
    else:
        value = later.value
    return Aggregate(count, value, later.last_ts, later.last_seq)


def _later(a: Aggregate, b: Aggregate) -> Aggregate:
    """The aggregate holding the latest event; a full tie is broken by value so that
    merging stays commutative."""
    key_a, key_b = (a.last_ts, a.last_seq), (b.last_ts, b.last_seq)
    if key_a != key_b:
        return a if key_a > key_b else b
    return a if a.value.compare_total(b.value) >= 0 else b


class AggregateView(Protocol):
    """What an `Aggregate` and a `Tally` both show: `count` events, `value` the quantity (the
    count itself for count; an int where every value was one), and the latest event by
    (`last_ts`, `last_seq`)."""

    @property
    def count(self) -> int: ...

    @property
    def value(self) -> Number: ...

    @property
    def last_ts(self) -> int: ...

    @property
    def last_seq(self) -> int: ...


def as_aggregate(view: AggregateView) -> Aggregate:
    """`view` as an Aggregate (itself when it is one)."""
    if isinstance(view, Aggregate):
        return view
    return Aggregate(view.count, Decimal(view.value), view.last_ts, view.last_seq)


class Tally:
    """A running `fold` kept mutable, for the event writer's batches: no Aggregate and, while
    every value is an int, no Decimal is built per event. Events must be added in increasing
    store sequence (as they are stored), so an event is the latest unless its timestamp is
    older. `value` is the quantity, as an `AggregateView`'s: the sum, max or last value, or
    the count (a count meter's tally starts from the value 1, as `Meter.number` gives it)."""

    __slots__ = ("count", "last_seq", "last_ts", "value")

    def __init__(self, value: Number, ts_ms: int, seq: int) -> None:
        self.count = 1
        self.value = value
        self.last_ts = ts_ms
        self.last_seq = seq


TallyAdder = Callable[[Tally, Number, int, int], None]


def tally_adder(kind: AggregationType) -> TallyAdder:
    """The function that adds one event (value, timestamp, seq) to a `Tally` of `kind`."""
    return _ADDERS[kind]


def _add_count(tally: Tally, value: Number, ts_ms: int, seq: int) -> None:
    tally.count = tally.value = tally.count + 1
    if ts_ms >= tally.last_ts:
        tally.last_ts, tally.last_seq = ts_ms, seq


def _add_sum(tally: Tally, value: Number, ts_ms: int, seq: int) -> None:
    total = tally.value
    if type(total) is int and type(value) is int:
        tally.value = total + value  # Python ints are exact: no context needed
    else:
        tally.value = EXACT.add(total, value)
    tally.count += 1
    if ts_ms >= tally.last_ts:
        tally.last_ts, tally.last_seq = ts_ms, seq


def _add_max(tally: Tally, value: Number, ts_ms: int, seq: int) -> None:
    best = tally.value
    if type(best) is int and type(value) is int:
        if value > best:
            tally.value = value
    else:  # Decimal.max breaks numeric ties by exponent, as `fold` does
        tally.value = EXACT.max(best, value)
    tally.count += 1
    if ts_ms >= tally.last_ts:
        tally.last_ts, tally.last_seq = ts_ms, seq


def _add_last(tally: Tally, value: Number, ts_ms: int, seq: int) -> None:
    tally.count += 1
    if ts_ms >= tally.last_ts:
        tally.value, tally.last_ts, tally.last_seq = value, ts_ms, seq


_ADDERS: dict[AggregationType, TallyAdder] = {
    "count": _add_count, "sum": _add_sum, "max": _add_max, "last": _add_last,
}


def quantity(kind: AggregationType, agg: Aggregate | None) -> Decimal:
    """The billable quantity of a span: 0 for a span without events, for every type."""
    if agg is None:
        return _ZERO
    return Decimal(agg.count) if kind == "count" else agg.value


# ------------------------------------------------------------------- parsing


def parse_meters(root: Section) -> tuple[Meter, ...]:
    """Read `meters:`; problems (named like `meters[2].aggregation.key: required for type
    sum`) are recorded in `root.problems` and the faulty meters left out."""
    meters: list[Meter] = []
    first_seen: dict[str, str] = {}
    for section in root.sections("meters"):
        meter = _parse_meter(section)
        if meter is None:
            continue
        if meter.name in first_seen:
            section.fail("name", f"duplicate meter name {meter.name!r} "
                                 f"(first at {first_seen[meter.name]})")
            continue
        first_seen[meter.name] = section.path
        meters.append(meter)
    return tuple(meters)


def _parse_meter(section: Section) -> Meter | None:
    errors = len(section.problems.errors)
    name: str = section.text("name")
    if section.has("name") and not _NAME.fullmatch(name):
        section.fail("name", "use 1-100 letters, digits, '_', '.', ':' or '-', "
                             f"starting with a letter or digit; got {name!r}")
    event_name: str = section.text("event_name")
    if section.has("event_name") and not event_name:
        section.fail("event_name", "must not be empty")
    kind, key = _parse_aggregation(section)
    filter_ = parse_filter(section.section("filter")) if section.has("filter") else None
    unit: str | None = section.text("measurement_unit", None)
    section.done()
    if len(section.problems.errors) > errors:
        return None
    return Meter(name, event_name, kind, key, filter_, unit)


def _parse_aggregation(section: Section) -> tuple[AggregationType, str | None]:
    if not section.has("aggregation"):
        section.fail("aggregation", "required (e.g. {type: count})")
        return "count", None
    aggregation = section.section("aggregation")
    kind: AggregationType = aggregation.choice("type", AGGREGATION_TYPES)
    key: str | None = aggregation.text("key", None)
    if kind == "count" and key is not None:
        aggregation.fail("key", "not allowed for type count (it counts events)")
    elif kind != "count" and not key:
        aggregation.fail("key", f"required for type {kind}")
    aggregation.done()
    return kind, key
