"""What the admin API's handlers use of a running meterproxy.

`proxy.app.MeterProxy` builds the admin app and is passed to every handler; the handlers
name this protocol instead of the class, so the admin package does not depend on the module
that assembles it (the app imports the admin routes, never the other way round).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry

from billing.engine import StatementEngine
from billing.scheduler import Scheduler
from billing.store.postgres import PostgresStore
from billing.store.sqlite import SqliteStore
from billing.writer import EventWriter
from proxy.config import Config
from proxy.metrics import Metrics
from proxy.usage_metrics import UsageCollector


class AdminContext(Protocol):
    """The parts of a running meterproxy the admin API reads and calls."""

    config: Config  # replaced by a reload (SIGHUP): read it per request
    clock: Callable[[], int]
    registry: CollectorRegistry
    metrics: Metrics
    store: SqliteStore | PostgresStore
    engine: StatementEngine
    scheduler: Scheduler
    usage_metrics: UsageCollector
    writer: EventWriter
    draining: bool

    async def reload_keys(self) -> None:
        """Load the active API keys again (after a key changed)."""
