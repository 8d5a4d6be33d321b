"""Open-period usage and statements on /metrics.

prometheus_client collectors are synchronous and run inside the event loop, so they
must not query the store. The /metrics handler awaits `UsageCollector.refresh()`, which at
most once per `max_age_ms` (concurrent scrapes share one refresh) folds the open-usage
table (proxy/usage_table.py: read whole from the store at start and every
`metrics.usage_reconcile`, kept current by the deltas of this process's appends in between)
into a small snapshot; `collect()` only yields from it. A scrape thus costs a fold of the
table and a few small reads, not a read of every customer's aggregates.

Per-customer series exist only with `metrics.customer_labels`: the `max_customers`
largest customers of each meter, the rest summed into `customer="__other__"`, so the
series count stays bounded however many customers there are.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from billing.engine import OpenUsageReader
from billing.meters import Meter
from billing.statement import StatementStatus
from billing.writer import Appender
from proxy.metrics import OTHER
from proxy.usage_table import OpenUsageTable, UsageTap

log = logging.getLogger("meterproxy.metrics")

USAGE = "meterproxy_meter_usage"
USAGE_HELP = (
    "Open-period quantity of each meter in its own unit, summed over customers "
    "(customer label: one customer's, or __other__ for the rest)"
)


class UsageSource(Protocol):
    """What the collector reads: the billing engine."""

    def usage_reader(self, now_ms: int) -> AbstractAsyncContextManager[OpenUsageReader]:
        """A reader of the usage of the periods open at now_ms, on one store snapshot."""

    async def statement_counts(self) -> Mapping[StatementStatus, int]:
        """status -> statements stored with that status."""


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """What one scrape reports: per-meter totals and, if enabled, folded customers."""

    totals: tuple[tuple[str, Decimal], ...] = ()  # (meter, quantity), every meter
    customers: tuple[tuple[str, str, Decimal], ...] = ()  # (meter, customer, quantity)
    statements: tuple[tuple[str, int], ...] = ()  # (status, statements that reached it)


def fold_customers(quantities: Mapping[str, Decimal], cap: int) -> list[tuple[str, Decimal]]:
    """The `cap` largest customers by quantity (ties: smaller id first), largest first,
    then (OTHER, the sum of everyone else) when anyone was left out.

    A customer whose id is OTHER itself is always folded, so its series cannot be
    mistaken for a single customer's. The quantities returned sum to the input's.
    """
    named = ((c, q) for c, q in quantities.items() if c != OTHER)
    top = heapq.nsmallest(cap, named, key=lambda cq: (-cq[1], cq[0]))
    if len(top) == len(quantities):
        return top
    rest = sum(quantities.values(), Decimal(0)) - sum((q for _, q in top), Decimal(0))
    return [*top, (OTHER, rest)]


def statement_totals(counts: Mapping[StatementStatus, int]) -> tuple[tuple[str, int], ...]:
    """Statements that reached each status, from the counts stored per status.

    Statements are never deleted and a final one never changes, so `draft` (every
    statement created, drafts and finals) and `final` (those finalised) only grow, as a
    Prometheus counter must, and survive restarts.
    """
    final = counts.get("final", 0)
    return (("draft", counts.get("draft", 0) + final), ("final", final))


def take_snapshot(
    meters: Iterable[str],
    usage: Mapping[str, Mapping[str, Decimal]],
    statements: Mapping[StatementStatus, int],
    max_customers: int | None,
) -> UsageSnapshot:
    """Fold the engine's answers; `max_customers` None leaves customers out."""
    totals: list[tuple[str, Decimal]] = []
    customers: list[tuple[str, str, Decimal]] = []
    for meter in meters:
        quantities = usage.get(meter, {})
        totals.append((meter, sum(quantities.values(), Decimal(0))))
        if max_customers is not None:
            folded = fold_customers(quantities, max_customers)
            customers.extend((meter, customer, q) for customer, q in folded)
    return UsageSnapshot(tuple(totals), tuple(customers), statement_totals(statements))


class UsageCollector(Collector):
    """Yields `meterproxy_meter_usage` and `meterproxy_statements_total` from a snapshot.

    The usage comes from an `OpenUsageTable` that `run()` reads whole from `source` at once
    and every `reconcile_ms` after, and that the appends passing through `tap()` keep
    current in between. Before the first successful `refresh()` it yields the families
    without samples.
    """

    def __init__(
        self,
        source: UsageSource,
        meters: Sequence[Meter],
        *,
        clock: Callable[[], int],
        max_customers: int | None = None,
        max_age_ms: int = 1000,
        reconcile_ms: int = 300_000,
    ) -> None:
        self._source = source
        self._meters = tuple(m.name for m in meters)
        self._clock = clock
        self._max_customers = max_customers
        self._max_age_ms = max_age_ms
        self._reconcile_s = reconcile_ms / 1000
        self.table = OpenUsageTable(meters)
        self._lock = asyncio.Lock()  # refreshes take turns
        self._reading = asyncio.Lock()  # reads into the table take turns
        self._whole_read_due = asyncio.Event()  # run() reads the whole table when set
        self._ahead: int | None = None  # the store's watermark, when beyond the table's
        self._snapshot = UsageSnapshot()
        self._folded: int | None = None  # the table version of the snapshot's usage
        self._taken_ms: int | None = None

    def tap(self, appender: Appender) -> UsageTap:
        """`appender` with the deltas of its appends merged into the table: give the event
        writer (and, in fleet mode, the spool's forwarding) this instead of the store."""
        return UsageTap(appender, self.table)

    async def run(self) -> None:
        """Read the whole table at once, then every `reconcile_ms`, and whenever a refresh
        found the store holding commits the table did not follow (another replica's, in
        fleet mode) or a delta told of one. Runs until cancelled; a failed read is logged
        and tried again at the next of these occasions."""
        while True:
            self._whole_read_due.clear()
            try:
                async with self._reading:
                    await self._read(self._clock(), whole=True)
            except Exception:
                log.warning("reading usage for /metrics failed; trying again later",
                            exc_info=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._reconcile_s):
                    await self._whole_read_due.wait()

    async def refresh(self) -> None:
        """Bring the snapshot up to date unless it is younger than `max_age_ms`: re-read the
        customers whose open period changed or whose deltas could not be merged, then fold
        the table. The first refresh waits for the table's first whole read; while `run()`
        reads it whole again, a refresh folds it as it is.

        Never raises: when the store cannot answer, the previous snapshot stays and the
        failure is logged (a scrape must not fail because of it).
        """
        async with self._lock:
            now = self._clock()
            if self._taken_ms is not None and 0 <= now - self._taken_ms < self._max_age_ms:
                return
            try:
                await self._read_changes(now)
                statements = await self._source.statement_counts()
            except Exception:
                log.warning(
                    "reading usage for /metrics failed; serving the last values", exc_info=True
                )
                return
            self._snapshot = self._fold(statements)
            self._taken_ms = now

    async def _read_changes(self, now: int) -> None:
        if self.table.loaded and self._reading.locked():
            return
        async with self._reading:
            await self._read(now, whole=not self.table.loaded)

    async def _read(self, now: int, *, whole: bool) -> None:
        """Read the whole table, or the customers it needs re-read, from one snapshot."""
        self.table.begin_read()
        try:
            async with self._source.usage_reader(now) as reader:
                customers = None if whole else self.table.to_read(reader.periods)
                found = {} if customers == set() else await reader.quantities(customers)
                if not whole:
                    self._note_watermark(reader.watermark)
        except BaseException:
            self.table.cancel_read()
            raise
        self.table.finish_read(reader.periods, reader.watermark, found, customers)
        if whole:
            self._ahead = None

    def _note_watermark(self, watermark: int) -> None:
        """Ask for a whole read when the store holds commits the table did not follow. The
        store's watermark seen beyond the table must still be so at the next refresh: an
        append that just committed hands its deltas over a moment later."""
        if self.table.gap or (self._ahead is not None and self.table.behind(self._ahead)):
            self._whole_read_due.set()
        self._ahead = watermark if self.table.behind(watermark) else None

    def _fold(self, statements: Mapping[StatementStatus, int]) -> UsageSnapshot:
        """The snapshot of the table now; its usage folded again only when it changed."""
        if self._folded == self.table.version:
            return replace(self._snapshot, statements=statement_totals(statements))
        self._folded = self.table.version
        return take_snapshot(self._meters, self.table.usage, statements, self._max_customers)

    def describe(self) -> Iterable[Metric]:
        return self._families(UsageSnapshot())

    def collect(self) -> Iterable[Metric]:
        return self._families(self._snapshot)

    def _families(self, snapshot: UsageSnapshot) -> Iterator[Metric]:
        usage = GaugeMetricFamily(USAGE, USAGE_HELP)
        # Prometheus values are float64: exact Decimals are rounded only here, at the edge.
        for meter, quantity in snapshot.totals:
            usage.add_sample(USAGE, {"meter": meter}, float(quantity))
        for meter, customer, quantity in snapshot.customers:
            usage.add_sample(USAGE, {"meter": meter, "customer": customer}, float(quantity))
        yield usage
        statements = CounterMetricFamily(
            "meterproxy_statements",
            "Statements created (status=draft counts drafts and finals) and finalised "
            "(status=final), from the store",
            labels=["status"],
        )
        for status, count in snapshot.statements:
            statements.add_metric([status], count)
        yield statements
