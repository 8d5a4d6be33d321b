"""billing/store/spool.py: the local spool on its own, then in front of a real PostgreSQL
server of the test's own that is stopped (as by a crash) and started again under load."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from decimal import Decimal
from pathlib import Path

import pytest

from billing.events import UsageEvent
from billing.store.base import StoreError
from billing.store.key_cache import KeyCache
from billing.store.postgres import PostgresStore
from billing.store.spool import Spool, SpoolingAppender
from billing.writer import EventWriter
from tests.store.backends import PostgresBackend
from tests.store.factories import BUCKET, DAY, METERS, event
from tests.store.pg_cluster import Cluster


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    s = Spool(str(tmp_path / "spool.db"))
    await s.open()
    yield s
    await s.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    server = Cluster()
    server.create()
    yield server
    server.destroy()


@pytest.fixture
async def server(cluster: Cluster) -> AsyncIterator[PostgresBackend]:
    """Databases on the throwaway cluster, which is running when the test starts."""
    await cluster.start_if_stopped()
    backend = PostgresBackend(cluster.admin_url)
    yield backend
    await cluster.start_if_stopped()
    await backend.dispose()


# ------------------------------------------------------------------ the spool


async def test_the_spool_keeps_order_and_each_event_id_once(spool: Spool) -> None:
    assert await spool.add([event("a", n=1), event("b"), event("a", n=2)]) == (True, True, False)
    assert await spool.add([event("b"), event("c", n=Decimal("0.50"))]) == (False, True)
    assert spool.size == 3
    found = await spool.oldest(10)
    assert [e for _, e in found] == [event("a", n=1), event("b"), event("c", n=Decimal("0.50"))]
    assert [e.event_id for _, e in await spool.oldest(2)] == ["a", "b"]
    await spool.remove_through(found[1][0])
    assert spool.size == 1
    assert [e.event_id for _, e in await spool.oldest(10)] == ["c"]


async def test_spooled_events_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "spool.db")
    first = Spool(path)
    await first.open()
    await first.add([event("a", source="proxy", method="GET"), event("b", ts=-5)])
    await first.close()
    again = Spool(path)
    await again.open()
    try:
        assert again.size == 2
        assert [e for _, e in await again.oldest(10)] == [
            event("a", source="proxy", method="GET"), event("b", ts=-5)
        ]
    finally:
        await again.close()


async def test_a_closed_spool_is_an_error(spool: Spool) -> None:
    await spool.close()
    with pytest.raises(StoreError, match="not open"):
        await spool.add([event("a")])


# -------------------------------------------------- in front of PostgreSQL


class Replica:
    """A PostgresStore behind a SpoolingAppender whose forwarding loop runs as a task."""

    def __init__(self, url: str, spool_path: Path) -> None:
        self.store = PostgresStore(url, METERS, BUCKET, connect_timeout_s=2)
        self.spool = Spool(str(spool_path))
        self.appender = SpoolingAppender(self.store, self.spool, retry_s=0.05)
        self._forwarder: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Replica:
        await self.store.open()
        await self.spool.open()
        self._forwarder = asyncio.ensure_future(self.appender.run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._forwarder is not None:
            self._forwarder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._forwarder
        await self.spool.close()
        await self.store.close()

    async def drained(self) -> None:
        """Return once the forwarding loop emptied the spool."""
        async with asyncio.timeout(60):
            while self.appender.spooled:  # noqa: ASYNC110 (the spool announces nothing)
                await asyncio.sleep(0.02)


def traffic(batches: int, size: int) -> list[list[UsageEvent]]:
    """Batches of distinct events over 4 customers; every 7th batch repeats an earlier event
    (a client retry), which must be stored and counted once."""
    work = [[event(f"b{i}-{j}", f"c{j % 4}", ts=(i * size + j) * 37 % (2 * DAY), n=j + 1)
             for j in range(size)] for i in range(batches)]
    for i in range(7, batches, 7):
        work[i].append(work[i - 3][0])
    return work


async def check_stored_once_in_order(store: PostgresStore, work: list[list[UsageEvent]]) -> None:
    """Every distinct event stored once, in first-submission order, and counted once."""
    firsts = list(dict.fromkeys(e.event_id for batch in work for e in batch))
    stored = await store.list_events(limit=1_000_000)
    assert [s.event.event_id for s in sorted(stored, key=lambda s: s.seq)] == firsts
    distinct = {e.event_id: e for batch in work for e in batch}.values()
    calls: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    for e in distinct:
        calls[e.customer_id] += 1
        tokens[e.customer_id] += int(e.metadata["n"])
    found = await store.meter_quantities_by_customer("tokens_sum", 0, 2 * DAY)
    assert {c: (a.count, a.value) for c, a in found.items()} == {
        c: (calls[c], Decimal(tokens[c])) for c in calls
    }


async def test_stopping_postgresql_under_load_loses_nothing_and_counts_nothing_twice(
    cluster: Cluster, server: PostgresBackend, tmp_path: Path
) -> None:
    work = traffic(batches=120, size=25)
    spooled_at: list[int] = []
    async with Replica(await server.location(), tmp_path / "spool.db") as replica:

        async def clients() -> None:
            for i, batch in enumerate(work):
                result = await replica.appender.append(batch, now_ms=1000 + i)
                assert result.stored_count >= len(batch) - 1
                spooled_at.append(replica.appender.spooled)
                await asyncio.sleep(0)  # let the forwarder and the operator in

        async def operator() -> None:
            while len(spooled_at) < 30:  # noqa: ASYNC110 (polls the clients' progress)
                await asyncio.sleep(0.005)
            await cluster.stop("immediate")
            while len(spooled_at) < 70:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            await cluster.start()

        await asyncio.gather(clients(), operator())
        await replica.drained()
        assert max(spooled_at) > 0  # the outage did send events to the spool
        await check_stored_once_in_order(replica.store, work)


async def test_a_replica_restarted_during_an_outage_forwards_its_spool_later(
    cluster: Cluster, server: PostgresBackend, tmp_path: Path
) -> None:
    url, spool_path = await server.location(), tmp_path / "spool.db"
    work = traffic(batches=12, size=10)
    async with Replica(url, spool_path) as replica:
        for i, batch in enumerate(work[:4]):
            await replica.appender.append(batch, now_ms=i)
        await cluster.stop("fast")
        for i, batch in enumerate(work[4:8], 4):
            await replica.appender.append(batch, now_ms=i)
        assert replica.appender.spooled == 40
    await cluster.start()
    async with Replica(url, spool_path) as restarted:
        for i, batch in enumerate(work[8:], 8):  # behind the spooled ones, never before them
            await restarted.appender.append(batch, now_ms=i)
        await restarted.drained()
        await check_stored_once_in_order(restarted.store, work)


async def test_a_refused_batch_is_not_spooled(server: PostgresBackend, tmp_path: Path) -> None:
    bad = UsageEvent("bad", "c1", "tokens", 0, {}, "elsewhere")  # type: ignore[arg-type]
    async with Replica(await server.location(), tmp_path / "spool.db") as replica:
        with pytest.raises(StoreError):
            await replica.appender.append([event("ok"), bad], now_ms=1)
        assert replica.appender.spooled == 0
        assert await replica.store.get_event("ok") is None


async def test_the_writer_stays_healthy_and_durable_while_postgresql_is_down(
    cluster: Cluster, server: PostgresBackend, tmp_path: Path
) -> None:
    work = traffic(batches=6, size=10)
    async with Replica(await server.location(), tmp_path / "spool.db") as replica:
        writer = EventWriter(replica.appender, flush_interval_ms=5)
        loop = asyncio.ensure_future(writer.run())
        try:
            assert (await writer.submit_durable(work[0])).stored_count == 10
            await cluster.stop("immediate")
            for batch in work[1:4]:  # what the ingest API awaits before answering 200
                assert (await writer.submit_durable(batch)).stored_count == 10
                assert not writer.failing
            await cluster.start()
            for batch in work[4:]:
                writer.submit(batch)
            assert await writer.close(timeout=30) == 0
        finally:
            await loop
        await replica.drained()
        await check_stored_once_in_order(replica.store, work)


class Heard:
    """A writer observer that keeps what it hears of forwards."""

    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str, str]] = Counter()
        self.skipped: Counter[tuple[str, str]] = Counter()

    def on_flush(self, events_count: int, duration_s: float) -> None:
        raise AssertionError("a forward is not a flush")

    def on_flush_error(self, exc: Exception) -> None:
        raise AssertionError("a forward is not a flush")

    def on_stored(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        self.outcomes.update(counts)

    def on_skipped(self, meter: str, reason: str, n: int) -> None:
        self.skipped[(meter, reason)] += n


async def test_a_store_not_open_yet_spools_and_a_forward_reports_what_only_it_learns(
    tmp_path: Path
) -> None:
    """A replica started while PostgreSQL was down spools from the start; once the store is
    open, the forward tells the observer of the events PostgreSQL already held (another
    replica stored them) and of the events a meter skipped."""
    backend = PostgresBackend()
    url = await backend.location()
    store = PostgresStore(url, METERS, BUCKET)
    spool = Spool(str(tmp_path / "spool.db"))
    heard = Heard()
    appender = SpoolingAppender(store, spool, observer=heard, primary_open=False, retry_s=0.01)
    await spool.open()
    forwarder = asyncio.ensure_future(appender.run())
    try:
        result = await appender.append([event("a", n=1), event("b"), event("c", n=3)], 10)
        assert result.stored == (True, True, True) and appender.spooled == 3
        await store.open()  # meanwhile another replica stored "a"
        assert (await store.append([event("a", n=1)], 20)).stored == (True,)
        appender.primary_opened()
        async with asyncio.timeout(30):
            while appender.spooled:  # noqa: ASYNC110 (the spool announces nothing)
                await asyncio.sleep(0.01)
        assert heard.outcomes == {("tokens", "api", "duplicate"): 1}
        assert heard.skipped == {(m, "missing"): 1 for m in ("tokens_sum", "tokens_max",
                                                             "tokens_last")}
        assert [e.event.event_id for e in await store.list_events(limit=10)] == ["c", "b", "a"]
    finally:
        forwarder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forwarder
        await spool.close()
        await store.close()
        await backend.dispose()


async def test_the_key_cache_keeps_the_keys_last_saved(tmp_path: Path) -> None:
    path = str(tmp_path / "spool.db")
    cache = KeyCache(path)
    assert await cache.load() == {}
    await cache.save({b"\x01" * 32: ("acme", "k1"), b"\x02" * 32: ("beta", "k2")})
    await cache.save({b"\x02" * 32: ("beta", "k2"), b"\x03" * 32: ("acme", "k3")})  # k1 revoked
    assert await KeyCache(path).load() == {b"\x02" * 32: ("beta", "k2"),
                                           b"\x03" * 32: ("acme", "k3")}
    spool = Spool(path)  # the spool shares the file
    await spool.open()
    try:
        assert await spool.add([event("a")]) == (True,)
    finally:
        await spool.close()
    assert len(await cache.load()) == 2
