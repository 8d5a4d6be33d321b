"""Events, meters and opened stores for the store tests."""

from __future__ import annotations

from collections.abc import Sequence

from billing.events import Metadata, MetadataValue, Source, UsageEvent
from billing.filters import Predicate
from billing.meters import AggregationType, Meter
from billing.store.base import ROLLUP_BUCKETS, Store
from billing.store.pg_rollups import SEAL_LAG_MS
from tests.store.backends import Backend

BUCKET = 1_000
DAY = BUCKET * ROLLUP_BUCKETS  # one rollup row


def sealing(day: int) -> int:
    """An append stamp by which the days before `day` * DAY are sealed: both engines keep
    rollup rows only for days that ended SEAL_LAG_MS before a stamp (pg_rollups.py,
    base.sealed_until)."""
    return SEAL_LAG_MS + day * DAY


SEALED = sealing(4)  # every test day sealed


def event(
    event_id: str,
    customer: str = "c1",
    name: str = "tokens",
    ts: int = 0,
    source: Source = "api",
    **metadata: MetadataValue,
) -> UsageEvent:
    return UsageEvent(event_id, customer, name, ts, metadata, source)


def meter(
    name: str, event_name: str, aggregation: AggregationType, key: str | None = None,
    filter: Predicate | None = None,
) -> Meter:
    return Meter(name=name, event_name=event_name, aggregation=aggregation, key=key,
                 filter=filter, measurement_unit=None)


def _is_pro(metadata: Metadata) -> bool:
    return metadata.get("tier") == "pro"


METERS = (
    meter("calls", "api.call", "count"),
    meter("pro_calls", "api.call", "count", filter=_is_pro),
    meter("tokens_sum", "tokens", "sum", "n"),
    meter("tokens_max", "tokens", "max", "n"),
    meter("tokens_last", "tokens", "last", "n"),
)


async def opened(
    backend: Backend, location: str, meters: Sequence[Meter] = METERS, bucket_ms: int = BUCKET,
    now: int = 1,
) -> Store:
    """A store of the backend at `location`, opened, whose clock reads `now`."""
    store = backend.store(location, meters, bucket_ms, lambda: now)
    await store.open()
    return store
