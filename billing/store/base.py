"""What every store engine shares: the `Store` interface, its values and the aggregate math.

The SQLite engine (billing/store/sqlite.py) implements `Store` today; a PostgreSQL engine for
fleet mode implements the same protocol later and reuses the engine-neutral helpers here:
the metadata codec, bucket arithmetic and `BatchFold`, which turns stored events into
per-(meter, customer, bucket) aggregate deltas.

Aggregates come in two sizes: buckets of `bucket_ms` (every period boundary falls on one)
and rollups of `ROLLUP_BUCKETS` buckets (a "day"), so that a month reads ~30 rollups and the
buckets at its ends instead of ~720 buckets. Rollups exist only for *sealed* days, those
before a mark that moves once a day has ended SEAL_LAG_MS before an append's stamp
(`sealed_until`): the hot path then writes one row per bucket, not two, and a day's rollup
is written once, from its buckets; a late event into a sealed day updates both. Reads take
rollup rows only below the mark (`plan_read`).

Exceptions:
    StoreError      -- the store cannot do what was asked (disk full, read-only file, a newer
                       schema, ...); engines translate their driver errors into it.
                       `is_transient` tells a store that may accept the same write later from
                       a write that its data makes impossible.
      DuplicateKey  -- an API key id or key hash that is already stored.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
from typing import Any, Protocol, runtime_checkable

from billing.events import Metadata, MetadataValue, StoredEvent, UsageEvent
from billing.meters import (
    Aggregate,
    AggregateView,
    AggregationType,
    Meter,
    Number,
    Skip,
    Tally,
    TallyAdder,
    as_aggregate,
    fold,
    merge,
    tally_adder,
)


class StoreError(Exception):
    """The store failed; the operation had no effect (its transaction was rolled back).

    `transient`: the engine knows the same write may succeed later (see `is_transient`).
    """

    def __init__(self, message: str = "", *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class DuplicateKey(StoreError):
    """An API key with this id or this hash is already stored."""


# Which failures are the store's condition rather than the data's. SQLite primary result codes:
# SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN.
_SQLITE_TRANSIENT = frozenset({5, 6, 8, 10, 13, 14})
# PostgreSQL SQLSTATEs: classes 08 (connection), 53 (insufficient resources: disk full, out of
# memory, too many connections), 57 (operator intervention: shutdown, statement timeout),
# 58 (system error: I/O); and read-only transaction, lock not available, serialization
# failure, deadlock.
_SQLSTATE_CLASSES = ("08", "53", "57", "58")
_SQLSTATES = frozenset({"25006", "55P03", "40001", "40P01"})


def is_transient(exc: BaseException) -> bool:
    """True when `exc` (a StoreError, usually) says the store cannot write *now*: its disk is
    full, its file or database is read-only, a lock is held, the connection was lost. The
    same write may then succeed later, so a caller retries it. False for everything else,
    which is a *data* error: the write itself is impossible (a constraint, a value the store
    cannot hold) and retrying it unchanged fails again.

    Read from the StoreError's own `transient` flag and from the driver error it was raised
    from (an OSError; a sqlite3 error code; a PostgreSQL SQLSTATE), so every engine that
    chains its driver error (`raise StoreError(...) from exc`) is classified alike.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "transient", False) is True or isinstance(seen, OSError):
            return True
        code = getattr(seen, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _SQLITE_TRANSIENT:
            return True
        state = getattr(seen, "sqlstate", None)
        if isinstance(state, str) and (state[:2] in _SQLSTATE_CLASSES or state in _SQLSTATES):
            return True
        seen = seen.__cause__
    return False


# ------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class AggregateDeltas:
    """What one append that stored events added to the aggregates.

    cells[meter name][(customer_id, bucket_start)]: the fold of the events it stored in
    that bucket of `bucket_ms` (meters without such events are absent), as the append made
    it: both engines hand over their batch's tallies, not Aggregates built for every cell
    of every append (a store process's arrive as Aggregates). `after_ms` is the watermark
    before the append and `stamp_ms` its events' `ingested_at_ms`: an append directly
    follows another when its `after_ms` is the other's `stamp_ms`, so a reader of deltas can
    tell whether it missed a commit.
    """

    after_ms: int
    stamp_ms: int
    bucket_ms: int
    cells: Mapping[str, Mapping[tuple[str, int], AggregateView]]

    @property
    def by_meter(self) -> dict[str, dict[tuple[str, int], Aggregate]]:
        """`cells` as Aggregates."""
        return {meter: {key: as_aggregate(view) for key, view in cells.items()}
                for meter, cells in self.cells.items()}


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one `Store.append` did.

    stored: per input index, True when this append stored the event, False when its event_id
        was already stored (or appeared earlier in the same batch: the first one wins).
    skipped: events left out of a meter, counted per (meter name, reason "missing" |
        "not_numeric"); only newly stored events are counted.
    watermark: the largest `ingested_at_ms` in the store after the append (0: no events).
    deltas: what the append added to the aggregates; None when it stored nothing or the
        engine does not report them (a part, a spooled append).
    """

    stored: tuple[bool, ...]
    skipped: Mapping[tuple[str, str], int]
    watermark: int
    deltas: AggregateDeltas | None = None

    @property
    def stored_count(self) -> int:
        return sum(self.stored)

    def part(self, start: int, end: int) -> AppendResult:
        """The result of input indexes [start, end) only; skipped counts and deltas stay with
        the whole."""
        return AppendResult(self.stored[start:end], {}, self.watermark)


@dataclass(frozen=True, slots=True)
class Customer:
    """A customer; `plan` is the plan assigned last (None: the default plan), which may not
    be in force yet (the plan history is the ledger's); `deleted_at_ms` None means active."""

    customer_id: str
    created_at_ms: int
    plan: str | None
    deleted_at_ms: int | None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as listed: never the secret, never its hash."""

    key_id: str
    customer_id: str
    prefix: str
    created_at_ms: int
    revoked_at_ms: int | None


# --------------------------------------------------------------------- interface


@runtime_checkable
class Store(Protocol):
    """Events, per-meter aggregates, customers and API keys behind one async interface.

    Times are int milliseconds (UTC) passed in by the caller. Every method may raise
    StoreError; a failed write has no effect.
    """

    async def open(self) -> None:
        """Create or migrate the schema, then rebuild the aggregates of changed meters."""

    async def close(self) -> None: ...

    async def append(self, events: Sequence[UsageEvent], now_ms: int) -> AppendResult:
        """Store the events not stored yet and update the aggregates, in one transaction.

        Each append that stores anything gets `ingested_at_ms = max(now_ms, previous + 1)`,
        so the largest ingested_at in any snapshot is a watermark. Unknown customers are
        created. Durable when it returns.
        """

    async def get_event(self, event_id: str) -> StoredEvent | None:
        """The stored event with this id; None if there is none."""

    async def list_events(
        self,
        *,
        customer_id: str | None = None,
        event_names: Sequence[str] | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int,
        offset: int = 0,
    ) -> list[StoredEvent]:
        """Events with timestamp in [start_ms, end_ms), newest first (timestamp, then seq).

        None leaves a filter out; an empty `event_names` matches nothing.
        """

    async def watermark(self) -> int:
        """The largest ingested_at_ms stored; 0 when the store holds no events."""

    async def meter_aggregate(
        self, meter_name: str, customer_id: str, start_ms: int, end_ms: int
    ) -> Aggregate | None:
        """The meter's aggregate over events with timestamp in [start_ms, end_ms).

        None: no event counts. Raises KeyError for a meter the store was not opened with.
        """

    async def meter_quantities_by_customer(
        self, meter_name: str, start_ms: int, end_ms: int
    ) -> dict[str, Aggregate]:
        """Every customer's aggregate over [start_ms, end_ms), from whole buckets only.

        Customers without events are absent. Raises ValueError when a bound is not a
        multiple of the bucket size, KeyError for an unknown meter.
        """

    async def rebuild_aggregates(self, meters: Sequence[str] | None = None) -> None:
        """Recompute the named meters' aggregates (None: all) from the raw events."""

    async def ensure_customer(self, customer_id: str, now_ms: int) -> Customer:
        """The customer, created at now_ms if it did not exist."""

    async def get_customer(self, customer_id: str) -> Customer | None:
        """The customer; None if unknown."""

    async def list_customers(self, limit: int, offset: int = 0) -> list[Customer]:
        """Customers ordered by id."""

    async def set_customer_plan(self, customer_id: str, plan: str | None, now_ms: int) -> Customer:
        """Give the customer `plan` from now_ms on (None: the default plan), creating the
        customer if unknown. The admin API changes plans from the end of the current period
        instead (`Ledger.assign_plan`, billing/store/ledger.py)."""

    async def add_key(
        self, customer_id: str, key_id: str, key_hash: bytes, prefix: str, now_ms: int
    ) -> ApiKey:
        """Store a key's hash (never the key), creating the customer if unknown.

        Raises DuplicateKey when the id or the hash is already stored.
        """

    async def revoke_key(self, customer_id: str, key_id: str, now_ms: int) -> bool:
        """Revoke the customer's key; False if it is unknown or already revoked."""

    async def list_keys(self, customer_id: str) -> list[ApiKey]:
        """The customer's keys, revoked ones included, oldest first."""

    async def active_key_hashes(self) -> dict[bytes, tuple[str, str]]:
        """Hash -> (customer_id, key_id) of every key that is not revoked."""

    async def keys_version(self) -> int:
        """A counter that grows with every key change: poll it, reload keys when it moves."""


# ------------------------------------------------------------- metadata codec

_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _no_default(value: object) -> object:
    raise TypeError(f"{type(value).__name__} needs the Decimal-aware encoder")


# The C encoder called directly: JSONEncoder.encode builds a new one on every call, which
# cost more than the encoding of a small flat map. markers=None: metadata is flat, no cycles.
_encode_plain: Callable[[object, int], Sequence[str]] | None = (
    None if c_make_encoder is None else
    c_make_encoder(None, _no_default, c_encode_basestring, None, ":", ",", False, False, False)
)


def encode_metadata(metadata: Metadata) -> str:
    """Flat metadata as a JSON object; a Decimal is written as its exact text, as a number."""
    try:  # the C encoder takes every metadata without a Decimal: the common case, fast
        if _encode_plain is not None:
            return "".join(_encode_plain(metadata, 0))
        return _encode_json(metadata if isinstance(metadata, dict) else dict(metadata))
    except TypeError:
        pass
    items = (f"{_encode_json(k)}:{_encode_value(v)}" for k, v in metadata.items())
    return "{" + ",".join(items) + "}"


def _encode_value(value: MetadataValue) -> str:
    # str(Decimal) is valid JSON number text for every finite Decimal ("1E+3", "-0.50").
    return str(value) if isinstance(value, Decimal) else _encode_json(value)


def decode_metadata(text: str) -> dict[str, MetadataValue]:
    """The inverse of encode_metadata, except that an integral number without a fraction or
    exponent comes back as int (Decimal("5") -> 5, equal in value); others as Decimal."""
    decoded: dict[str, MetadataValue] = json.loads(text, parse_float=Decimal)
    return decoded


# ------------------------------------------------------------------ aggregates

ROLLUP_BUCKETS = 24  # buckets per rollup row: a day of hourly buckets


def bucket_start(ts_ms: int, bucket_ms: int) -> int:
    """The start of the bucket holding ts_ms (buckets are aligned to the Unix epoch)."""
    return ts_ms - ts_ms % bucket_ms


@dataclass(frozen=True, slots=True)
class PeriodSplit:
    """A time range cut into whole buckets (read from aggregates) and partial edges (raw)."""

    buckets: tuple[int, int] | None  # [first bucket start, end of the last bucket)
    edges: tuple[tuple[int, int], ...]  # sub-ranges [start, end) to read from raw events


def split_period(start_ms: int, end_ms: int, bucket_ms: int) -> PeriodSplit:
    """Cut [start_ms, end_ms) so that whole buckets come from aggregates."""
    first = -(-start_ms // bucket_ms) * bucket_ms  # ceil to a bucket boundary
    last = end_ms // bucket_ms * bucket_ms
    if first >= last:
        return PeriodSplit(None, ((start_ms, end_ms),) if start_ms < end_ms else ())
    edges = tuple((a, b) for a, b in ((start_ms, first), (last, end_ms)) if a < b)
    return PeriodSplit((first, last), edges)


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Where each part of a period is read from: raw events at unaligned edges, buckets
    within `buckets` but outside `rollups`, rollup rows within `rollups`."""

    raw: tuple[tuple[int, int], ...]
    buckets: tuple[int, int] | None
    rollups: tuple[int, int] | None


def plan_read(
    start_ms: int, end_ms: int, bucket_ms: int, sealed_until: int | None = None
) -> ReadPlan:
    """The cheapest way to read [start_ms, end_ms): rollups inside, buckets, then raw.

    `sealed_until`: rollup rows exist only for days before it (None: for every day), so
    rollups are read only there and the buckets of later days instead.
    """
    outer = split_period(start_ms, end_ms, bucket_ms)
    if outer.buckets is None:
        return ReadPlan(outer.edges, None, None)
    inner = split_period(*outer.buckets, bucket_ms * ROLLUP_BUCKETS).buckets
    if inner is not None and sealed_until is not None:
        inner = (inner[0], min(inner[1], sealed_until)) if inner[0] < sealed_until else None
    return ReadPlan(outer.edges, outer.buckets, inner)


# A day is sealed (gets its rollup rows) this long after it ends, so that the usual late
# events (ingest within its window, streams that ran past midnight) reach its buckets before
# it has a rollup to update too.
SEAL_LAG_MS = 2 * 3_600_000
NOTHING_SEALED = -(2**63)  # the mark of a meter none of whose days is sealed


def sealed_until(stamp_ms: int, bucket_ms: int) -> int:
    """The end of the last day sealed once an append is stamped `stamp_ms`: the start of the
    day that holds `stamp_ms - SEAL_LAG_MS`."""
    return bucket_start(stamp_ms - SEAL_LAG_MS, bucket_ms * ROLLUP_BUCKETS)


def merged(kind: AggregationType, acc: Aggregate | None, agg: Aggregate) -> Aggregate:
    """merge() when one side is known to be present, typed as never None."""
    result = merge(kind, acc, agg)
    assert result is not None  # merging with a present aggregate yields one
    return result


class BatchFold:
    """Accumulates the aggregate deltas of a run of stored events, added in seq order.

    `tallies[meter name][(customer_id, bucket_start)]` is the meter's running fold over the
    events added (`deltas`: the same as Aggregates); `skipped[(meter name, reason)]` counts
    events a meter could not read.
    """

    def __init__(self, meters: Iterable[Meter], bucket_ms: int) -> None:
        self.bucket_ms = bucket_ms
        self.kinds: dict[str, AggregationType] = {}
        self.tallies: dict[str, dict[tuple[str, int], Tally]] = {}
        # Per event name, what `add` needs of each meter, looked up once here.
        self._readers: dict[str, list[_Reader]] = {}
        for meter in meters:
            self.kinds[meter.name] = meter.aggregation
            tallies = self.tallies[meter.name] = {}
            reader = (meter.number, tallies, tally_adder(meter.aggregation), meter.name)
            self._readers.setdefault(meter.event_name, []).append(reader)
        self.skipped: Counter[tuple[str, str]] = Counter()

    def add(
        self, customer_id: str, event_name: str, ts_ms: int, seq: int, metadata: Metadata
    ) -> None:
        """Fold one event into the tallies of the meters that count it."""
        readers = self._readers.get(event_name)
        if readers is None:
            return
        key = (customer_id, ts_ms - ts_ms % self.bucket_ms)
        for read, tallies, add, name in readers:
            value = read(metadata)
            if value is None:  # filtered out: not this meter's event
                continue
            if isinstance(value, Skip):
                self.skipped[(name, value.reason)] += 1
                continue
            tally = tallies.get(key)
            if tally is None:
                tallies[key] = Tally(value, ts_ms, seq)
            else:
                add(tally, value, ts_ms, seq)

    def add_all(self, events: Iterable[UsageEvent], first_seq: int) -> None:
        """Fold stored events, numbered from `first_seq` in order."""
        add = self.add
        for seq, e in enumerate(events, first_seq):
            add(e.customer_id, e.event_name, e.timestamp_ms, seq, e.metadata)

    @property
    def cells(self) -> dict[str, dict[tuple[str, int], Tally]]:
        """Per meter with any delta, (customer_id, bucket_start) -> the tally of its events,
        for `AggregateDeltas.cells`: the batch must not change after."""
        return {name: tallies for name, tallies in self.tallies.items() if tallies}


_Reader = tuple[
    Callable[[Metadata], Number | Skip | None], dict[tuple[str, int], Tally], TallyAdder, str
]


def fold_rows(meter: Meter, rows: Iterable[Sequence[Any]]) -> Aggregate | None:
    """The meter's fold over raw (seq, timestamp_ms, metadata JSON) rows; None if none count."""
    agg: Aggregate | None = None
    for seq, ts_ms, metadata in rows:
        value = meter.read(decode_metadata(metadata))
        if value is not None and not isinstance(value, Skip):
            agg = fold(meter.aggregation, agg, value, ts_ms, seq)
    return agg
