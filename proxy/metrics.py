"""Prometheus metrics on an injected registry; names are part of the contract.

Label children whose values come from the configuration (rule names, meter names,
event names) are created once here, so the request path does dict lookups only.
Usage per meter and statements come from the store at scrape time (usage_metrics.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from proxy.version import __version__

# meterproxy is the only exporter in its process; a `_created` series beside every
# counter child would double the series count for a timestamp nobody queries.
disable_created_metrics()  # type: ignore[no-untyped-call]

OTHER = "__other__"
NO_RULE = "__none__"
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")
EVENT_SOURCES = ("proxy", "api")
EVENT_OUTCOMES = ("stored", "duplicate", "rejected", "dropped")
RULE_ERROR_REASONS = ("missing", "body_too_large", "not_json", "encoding", "error")
SKIP_REASONS = ("missing", "not_numeric")
PROXY_ERRORS = (
    "bad_key",
    "unidentified",
    "body_too_large",
    "upstream_unreachable",
    "upstream_timeout",
    "upstream_broken",
    "store_unavailable",
    "bad_request",
    "client_timeout",
    "too_many_connections",
)
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


def status_class(status: int | None) -> str:
    if status is None or not 100 <= status <= 599:
        return "none"
    return STATUS_CLASSES[status // 100 - 1]


@dataclass
class Metrics:
    """Every meterproxy metric pushed by the code, registered on `registry`.

    `count_*` helpers are the hot path: they look up children created at load time.
    """

    registry: CollectorRegistry
    rule_names: Iterable[str] = ()
    event_names: Iterable[str] = ()
    meter_names: Iterable[str] = ()
    _requests: dict[tuple[str, str], Counter] = field(default_factory=dict, init=False)
    _events: dict[tuple[str, str, str], Counter] = field(default_factory=dict, init=False)
    _rule_errors: dict[tuple[str, str], Counter] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        r = self.registry
        self.rule_names = tuple(self.rule_names)
        self.event_names = frozenset(self.event_names)
        self.meter_names = tuple(self.meter_names)
        self.requests = Counter(
            "meterproxy_requests",
            "Proxied exchanges, counted once per matching rule (rule=__none__: no rule matched)",
            ["rule", "status_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            "meterproxy_request_duration_seconds",
            "Duration of proxied exchanges in seconds, one observation per exchange",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "meterproxy_overhead_seconds",
            "Seconds meterproxy adds to an exchange: its duration minus the time spent "
            "waiting on the upstream or the client",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "meterproxy_events",
            "Usage events by event name, source (proxy|api) and outcome "
            "(stored|duplicate|rejected|dropped)",
            ["event_name", "source", "outcome"],
            registry=r,
        )
        self.store_pending = Gauge(
            "meterproxy_store_pending_events",
            "Events accepted but not yet written to the store",
            registry=r,
        )
        self.store_spooled = Gauge(
            "meterproxy_store_spooled_events",
            "Events kept in the local spool while PostgreSQL is unreachable (fleet mode), "
            "waiting to be forwarded",
            registry=r,
        )
        self.store_flush = Histogram(
            "meterproxy_store_flush_seconds",
            "Seconds one group commit of events took",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_flush_errors = Counter(
            "meterproxy_store_flush_errors",
            "Group commits that failed (the events stay queued and are retried)",
            registry=r,
        )
        self.meter_skipped = Counter(
            "meterproxy_meter_skipped_events",
            "Events left out of a meter because its key was missing or not numeric",
            ["meter", "reason"],
            registry=r,
        )
        self.rule_errors = Counter(
            "meterproxy_rule_errors",
            "Rule metadata values that could not be read, by rule and reason",
            ["rule", "reason"],
            registry=r,
        )
        self.unidentified = Counter(
            "meterproxy_unidentified_requests",
            "Requests whose customer could not be identified",
            registry=r,
        )
        self.proxy_errors = Counter(
            "meterproxy_proxy_errors",
            "Responses meterproxy made itself instead of the upstream, by reason",
            ["reason"],
            registry=r,
        )
        self.build_info = Gauge(
            "meterproxy_build_info",
            "Always 1; the version label says which meterproxy is running",
            ["version"],
            registry=r,
        )
        self.build_info.labels(__version__).set(1)
        # CPU, memory and file descriptors of meterproxy itself (Linux /proc).
        ProcessCollector(registry=r)
        # Collections and collected objects per generation: what proxy.gc changes.
        GCCollector(registry=r)
        self._precreate()

    def add_names(self, rule_names: Iterable[str], event_names: Iterable[str]) -> None:
        """Admit the names of a reloaded configuration (existing series stay)."""
        self.rule_names = tuple(dict.fromkeys((*self.rule_names, *rule_names)))
        self.event_names = frozenset(self.event_names) | frozenset(event_names)
        self._precreate()

    def _precreate(self) -> None:
        """Create every child whose labels come from a closed set (again: idempotent)."""
        for rule in (*self.rule_names, NO_RULE):
            for cls in STATUS_CLASSES:
                self._requests[rule, cls] = self.requests.labels(rule, cls)
            for reason in RULE_ERROR_REASONS:
                self._rule_errors[rule, reason] = self.rule_errors.labels(rule, reason)
        for name in (*self.event_names, OTHER):
            for source in EVENT_SOURCES:
                for outcome in EVENT_OUTCOMES:
                    self._events[name, source, outcome] = self.events.labels(name, source, outcome)
        for meter in self.meter_names:
            for reason in SKIP_REASONS:
                self.meter_skipped.labels(meter, reason)
        for reason in PROXY_ERRORS:
            self.proxy_errors.labels(reason)

    # -- hot-path helpers: lookups of pre-created children
    def count_request(self, rule: str, status_cls: str) -> None:
        self._requests[rule, status_cls].inc()

    def count_rule_error(self, rule: str, reason: str) -> None:
        self._rule_errors[rule, reason].inc()

    def count_events(self, event_name: str, source: str, outcome: str, n: int = 1) -> None:
        """Count n events; an event name no rule or meter uses counts as `__other__`."""
        key = (event_name if event_name in self.event_names else OTHER, source, outcome)
        self._events[key].inc(n)

    def count_proxy_error(self, reason: str) -> None:
        self.proxy_errors.labels(reason).inc()
