"""The open-usage table: every customer's quantity of each meter in its open period, in memory.

Reading that from the store costs a read of every customer's aggregates (seconds at ten
million events), so /metrics reads it whole once and then keeps it current with the aggregate
deltas of the appends this process commits (`UsageTap`), re-reading only what a delta cannot
settle:

- a customer whose open period the table does not know (new, or without a plan), a `last`
  meter (merging needs the stored latest event's timestamp and seq, which quantities do not
  carry) and a bucket that crosses the edge of the customer's period make the customer
  *stale*: the next read re-reads it;
- a customer whose open period changed (it ended, a plan was assigned, the customer was
  created or deleted) is re-read with its new period;
- a commit whose deltas the table did not follow (another replica's in fleet mode, or one
  whose result was lost) shows in the watermarks (`AggregateDeltas.after_ms`, the store's
  watermark) and sets `gap`: the table needs a whole read.

Deltas that arrive while a read is in flight are kept and replayed when it is taken, those
stamped after the read's snapshot only, so that every commit counts exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from decimal import Decimal
from typing import Literal

from billing.cycles import Period
from billing.engine import OpenPeriods
from billing.events import UsageEvent
from billing.meters import AggregationType, Meter, Number
from billing.money import EXACT
from billing.store.base import AggregateDeltas, AppendResult
from billing.writer import Appender

Quantities = dict[str, dict[str, Decimal]]  # meter -> customer -> quantity
Placement = Literal["inside", "outside", "across"]


class OpenUsageTable:
    """meter -> customer -> quantity of the customer's open period (see the module docstring).

    Not loaded until the first `finish_read` of a whole read; until then deltas are ignored
    (that read holds them). `version` grows whenever the quantities may have changed.
    """

    def __init__(self, meters: Iterable[Meter]) -> None:
        self._kinds: dict[str, AggregationType] = {m.name: m.aggregation for m in meters}
        self._usage: Quantities = {name: {} for name in self._kinds}
        self._spans: dict[str, Period] = {}  # customer -> the open period its quantities cover
        self._periods: OpenPeriods | None = None  # what _spans was taken from
        self._through: int | None = None  # the stamp of the last commit followed; None: not loaded
        self._stale: set[str] = set()
        self._log: list[AggregateDeltas] | None = None  # deltas since a read began
        self.gap = False
        self.version = 0

    @property
    def loaded(self) -> bool:
        return self._through is not None

    @property
    def usage(self) -> Mapping[str, Mapping[str, Decimal]]:
        """meter -> customer -> quantity; customers without usage are absent."""
        return self._usage

    def behind(self, watermark: int) -> bool:
        """Whether a store whose watermark is `watermark` holds commits the table did not
        follow (False when it is not loaded: its first read will hold them)."""
        return self._through is not None and watermark > self._through

    # ------------------------------------------------------------------ deltas

    def add(self, deltas: AggregateDeltas) -> None:
        """Merge what one committed append added (in commit order, as the writer commits)."""
        if self._log is not None:
            self._log.append(deltas)
        if self._through is not None:
            self._follow(deltas)

    def _follow(self, deltas: AggregateDeltas) -> None:
        assert self._through is not None
        if deltas.stamp_ms <= self._through:  # a read held this commit already
            return
        if deltas.after_ms != self._through:  # some commit in between went unseen
            self.gap = True
        self._through = deltas.stamp_ms
        self._merge(deltas, None)

    def _merge(self, deltas: AggregateDeltas, only: AbstractSet[str] | None) -> None:
        """Merge the cells of `only` customers (None: all) into their open periods."""
        bucket_ms, spans, stale = deltas.bucket_ms, self._spans, self._stale
        for meter, cells in deltas.cells.items():
            kind = self._kinds.get(meter)
            if kind is None:  # the store folds a meter this configuration does not show
                continue
            usage = self._usage[meter]
            for (customer, start), delta in cells.items():
                if only is not None and customer not in only:
                    continue
                span = spans.get(customer)
                where = "across" if span is None else _placed(start, bucket_ms, span)
                if where == "across" or (where == "inside" and kind == "last"):
                    stale.add(customer)
                elif where == "inside":
                    usage[customer] = _combined(kind, usage.get(customer), delta.value)
        self.version += 1

    # ------------------------------------------------------------------- reads

    def begin_read(self) -> None:
        """A read of the store starts: keep the deltas from now on (reads take turns)."""
        self._log = []

    def cancel_read(self) -> None:
        """The read failed: nothing changes."""
        self._log = None

    def to_read(self, periods: OpenPeriods) -> set[str] | None:
        """The customers to re-read, given whose periods are open now: those whose open
        period is not the one the table holds, and the stale ones with an open period.
        None: every customer (the table is not loaded)."""
        if self._through is None:
            return None
        spans = self._spans_of(periods)
        wanted = {c for c in self._stale if c in spans}
        if spans is not self._spans:
            wanted.update(c for c, span in spans.items() if self._spans.get(c) != span)
            wanted.update(c for c in self._spans if c not in spans)
        return wanted

    def finish_read(self, periods: OpenPeriods, watermark: int, found: Quantities,
                    customers: AbstractSet[str] | None) -> None:
        """Take a read's quantities of `customers` (None: all) in `periods`, as the snapshot
        whose watermark is `watermark` held them (the read began with `begin_read`)."""
        log, self._log = self._log or [], None
        spans = self._spans_of(periods)
        if customers is None:
            self._usage = {meter: found.get(meter, {}) for meter in self._kinds}
            self._stale.clear()
            self._spans, self._through, self.gap = spans, watermark, False
            for deltas in log:
                self._follow(deltas)
        else:
            self._replace(found, customers, spans)
            for deltas in log:
                if deltas.stamp_ms > watermark:
                    self._merge(deltas, customers)
        self._periods = periods
        if customers is None or customers:
            self.version += 1

    def _replace(self, found: Quantities, customers: AbstractSet[str],
                 spans: dict[str, Period]) -> None:
        """Put the quantities and periods read of `customers` in place of the table's."""
        for meter, usage in self._usage.items():
            read = found.get(meter, {})
            for customer in customers:
                value = read.get(customer)
                if value is None:
                    usage.pop(customer, None)
                else:
                    usage[customer] = value
        # Customers not read kept their periods (else they were read): all now agree with
        # `spans`. A stale customer without an open period has nothing to re-read.
        self._stale = {c for c in self._stale if c in spans and c not in customers}
        self._spans = spans

    def _spans_of(self, periods: OpenPeriods) -> dict[str, Period]:
        """customer -> open period, as `periods` says (the table's own when unchanged)."""
        if periods is self._periods:
            return self._spans
        return {customer: span for span, listed in periods.by_span.items() for customer in listed}


def _placed(start_ms: int, bucket_ms: int, span: Period) -> Placement:
    """Where the bucket starting at `start_ms` lies with respect to `span`."""
    end_ms = start_ms + bucket_ms
    if end_ms <= span.start_ms or start_ms >= span.end_ms:
        return "outside"
    if span.start_ms <= start_ms and end_ms <= span.end_ms:
        return "inside"
    return "across"


def _combined(kind: AggregationType, known: Decimal | None, added: Number) -> Decimal:
    """A count, sum or max quantity with the quantity of more events merged in, exactly
    (`EXACT` takes an int as it is)."""
    if known is None:
        return added if type(added) is Decimal else Decimal(added)
    return EXACT.max(known, added) if kind == "max" else EXACT.add(known, added)


class UsageTap:
    """An `Appender` that hands the deltas of every append it passes on to `table`, once the
    append committed; the result is returned unchanged."""

    def __init__(self, inner: Appender, table: OpenUsageTable) -> None:
        self._inner = inner
        self._table = table

    async def append(self, events: Sequence[UsageEvent], now_ms: int) -> AppendResult:
        result = await self._inner.append(events, now_ms)
        if result.deltas is not None:
            self._table.add(result.deltas)
        return result
