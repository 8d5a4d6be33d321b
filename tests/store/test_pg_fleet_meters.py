"""The fleet meter policy on PostgreSQL (billing/store/pg_meters.py): replicas of a rolling deploy
run different meter definitions on one database; none rebuilds another's aggregates, no
statement is read from aggregates that mix definitions or miss events, and
`meterproxy rebuild` (open with rebuild_all) ends it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from decimal import Decimal

import pytest

from billing.meters import Meter, quantity
from billing.store.base import StoreError
from billing.store.postgres import PostgresStore
from tests.store.backends import PostgresBackend
from tests.store.factories import BUCKET, event, meter

D = Decimal
CALLS = meter("calls", "api.call", "count")
OLD = (CALLS, meter("tokens", "tokens", "sum", "n"))
NEW = (CALLS, meter("tokens", "tokens", "sum", "m"))  # the same name, another key


async def replica(url: str, meters: Sequence[Meter], *, rebuild_all: bool = False,
                  now: int = 1) -> PostgresStore:
    store = PostgresStore(url, meters, BUCKET, clock=lambda: now)
    await store.open(rebuild_all=rebuild_all)
    return store


async def bills(store: PostgresStore) -> bool:
    """Whether the replica may read for billing (statements, previews, /metrics usage)."""
    try:
        async with store.billing_snapshot():
            return True
    except StoreError:
        return False


async def tokens(store: PostgresStore) -> Decimal:
    return quantity("sum", await store.meter_aggregate("tokens", "c1", 0, BUCKET))


async def test_a_rolling_deploy_never_rebuilds_and_pauses_billing_until_the_rebuild(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="billing.store.postgres")
    old = await replica(url, OLD)
    await old.append([event("a", n=2, m=10)], now_ms=1)
    new = await replica(url, NEW)
    stores = [old, new]
    try:
        assert [r.message for r in caplog.records if "rebuilding" in r.message] == [
            "rebuilding the aggregates of meter calls (new meter)",
            "rebuilding the aggregates of meter tokens (new meter)",
        ]  # the first replica's build only
        assert any("tokens" in r.message and r.levelno == logging.ERROR for r in caplog.records)
        assert await bills(old) and not await bills(new)
        await new.append([event("b", n=3, m=20, name="tokens"), event("c", name="api.call")], 2)
        assert await tokens(old) == 2  # the new replica does not fold its definition in...
        assert not await bills(old)  # ...so the old one's aggregates miss an event
        agg = await old.meter_aggregate("calls", "c1", 0, BUCKET)
        assert agg is not None and agg.count == 1  # meters in sync are folded as always
        for _ in range(2):  # restarts on either side rebuild nothing
            caplog.clear()
            for meters in (OLD, NEW):
                await (await replica(url, meters)).close()
            assert not [r for r in caplog.records if "rebuilding" in r.message]
        rebuilt = await replica(url, NEW, rebuild_all=True)  # meterproxy rebuild
        stores.append(rebuilt)
        assert await tokens(rebuilt) == 30 and await bills(new) and not await bills(old)
        await old.append([event("d", n=4, m=40)], 3)  # an old replica still running
        assert not await bills(new)
        assert await tokens(new) == 30
    finally:
        for store in stores:
            await store.close()


async def test_a_replica_without_a_meter_keeps_it_and_marks_it_incomplete(url: str) -> None:
    both = await replica(url, OLD)
    calls_only = await replica(url, (CALLS,))
    try:
        await both.append([event("a", n=2)], 1)
        assert await bills(both)
        await calls_only.append([event("b", n=3)], 2)  # not folded into tokens
        assert await tokens(both) == 2 and not await bills(both)
        assert await bills(calls_only)  # its own meters are whole
        await (await replica(url, OLD, rebuild_all=True)).close()
        assert await tokens(both) == 5 and await bills(both)
    finally:
        await both.close()
        await calls_only.close()


async def test_rebuild_drops_the_meters_its_configuration_lacks(
    pg: PostgresBackend, url: str
) -> None:
    first = await replica(url, OLD)
    await first.append([event("a", n=2)], 1)
    await first.close()
    assert await pg.rows(url, "SELECT DISTINCT meter FROM meter_aggregates") == [("tokens",)]
    await (await replica(url, (CALLS,), rebuild_all=True)).close()
    assert await pg.rows(url, "SELECT meter FROM meter_state") == [("calls",)]
    assert await pg.rows(url, "SELECT DISTINCT meter FROM meter_aggregates") == []
