"""The event writer's observer, reporting to Prometheus (billing never imports metrics)."""

from __future__ import annotations

from billing.writer import OutcomeCounts
from proxy.metrics import Metrics


class MetricsObserver:
    """Turns what the writer reports into store-health and event-outcome metrics.

    It does not log: the writer logs each failed flush itself, with its retry delay.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def on_flush(self, events_count: int, duration_s: float) -> None:
        self.metrics.store_flush.observe(duration_s)

    def on_flush_error(self, exc: Exception) -> None:
        self.metrics.store_flush_errors.inc()

    def on_stored(self, counts: OutcomeCounts) -> None:
        for (event_name, source, outcome), n in counts.items():
            self.metrics.count_events(event_name, source, outcome, n)

    def on_skipped(self, meter: str, reason: str, n: int) -> None:
        self.metrics.meter_skipped.labels(meter, reason).inc(n)
