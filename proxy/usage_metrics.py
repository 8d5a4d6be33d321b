"""Open-period usage and statements on /metrics, read from the store at scrape time.

prometheus_client collectors are synchronous and run inside the event loop, so they
must not query the store. The /metrics handler awaits `UsageCollector.refresh()`,
which reads the aggregates at most once per `max_age_ms` (concurrent scrapes share
one read) and folds them into a small snapshot; `collect()` only yields from it.

Per-customer series exist only with `metrics.customer_labels`: the `max_customers`
largest customers of each meter, the rest summed into `customer="__other__"`, so the
series count stays bounded however many customers there are.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from billing.statement import StatementStatus
from proxy.metrics import OTHER

log = logging.getLogger("meterproxy.metrics")

USAGE = "meterproxy_meter_usage"
USAGE_HELP = (
    "Open-period quantity of each meter in its own unit, summed over customers "
    "(customer label: one customer's, or __other__ for the rest)"
)


class UsageSource(Protocol):
    """What the collector reads: the billing engine."""

    async def open_usage(self, now_ms: int) -> Mapping[str, Mapping[str, Decimal]]:
        """meter -> customer -> quantity of that customer's period open at now_ms."""

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

    Before the first successful `refresh()` it yields the families without samples.
    """

    def __init__(
        self,
        source: UsageSource,
        meters: Iterable[str],
        *,
        clock: Callable[[], int],
        max_customers: int | None = None,
        max_age_ms: int = 1000,
    ) -> None:
        self._source = source
        self._meters = tuple(meters)
        self._clock = clock
        self._max_customers = max_customers
        self._max_age_ms = max_age_ms
        self._lock = asyncio.Lock()
        self._snapshot = UsageSnapshot()
        self._taken_ms: int | None = None

    async def refresh(self) -> None:
        """Re-read usage unless the snapshot is younger than `max_age_ms`.

        Never raises: when the store cannot answer, the previous snapshot stays and the
        failure is logged (a scrape must not fail because of it).
        """
        async with self._lock:
            now = self._clock()
            if self._taken_ms is not None and 0 <= now - self._taken_ms < self._max_age_ms:
                return
            try:
                usage = await self._source.open_usage(now)
                statements = await self._source.statement_counts()
            except Exception:
                log.warning(
                    "reading usage for /metrics failed; serving the last values", exc_info=True
                )
                return
            self._snapshot = take_snapshot(self._meters, usage, statements, self._max_customers)
            self._taken_ms = now

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
