"""What only the PostgreSQL engine promises: several replicas (here several PostgresStore
objects with pools of their own) on one database, and a server that goes away."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal
from importlib import resources

import asyncpg  # type: ignore[import-untyped]
import pytest

from billing.store.base import AppendResult, Store, StoreError
from billing.store.pg_connection import StoreUnreachable
from billing.store.pg_url import redact
from billing.store.postgres import PostgresStore
from tests.store.backends import PostgresBackend
from tests.store.factories import BUCKET, METERS, event, opened


async def replicas(pg: PostgresBackend, url: str, n: int) -> list[Store]:
    return [await opened(pg, url, now=i) for i in range(n)]


def clock_at(ms: int) -> Callable[[], int]:
    return lambda: ms


async def close_all(stores: Sequence[Store]) -> None:
    for store in stores:
        await store.close()


async def test_concurrent_appends_keep_the_watermark_a_promise(
    pg: PostgresBackend, url: str
) -> None:
    """Whenever a reader sees watermark W, every event that will ever have ingested_at <= W
    is already visible: none commits later with a smaller stamp."""
    a, b, reader = stores = await replicas(pg, url, 3)
    observations: list[tuple[int, int]] = []  # (watermark, events visible at or below it)
    done = asyncio.Event()

    async def replica(store: Store, name: str) -> list[AppendResult]:
        batches = [[event(f"{name}-{i}-{j}", f"c{j % 3}", n=1) for j in range(25)]
                   for i in range(40)]
        return [await store.append(batch, now_ms=1000) for batch in batches]

    async def observe(conn: asyncpg.Connection) -> None:
        while not done.is_set():
            w = await reader.watermark()
            visible = await conn.fetchval(
                "SELECT count(*) FROM events WHERE ingested_at_ms <= $1", w)
            observations.append((w, visible))

    conn = await asyncpg.connect(url)
    try:
        watcher = asyncio.ensure_future(observe(conn))
        results = await asyncio.gather(replica(a, "a"), replica(b, "b"))
        done.set()
        await watcher
        stamps = [r.watermark for rs in results for r in rs]
        assert sorted(stamps) == list(range(1000, 1080))  # one distinct stamp per append
        for w, visible in observations:
            later = await conn.fetchval(
                "SELECT count(*) FROM events WHERE ingested_at_ms <= $1", w)
            assert later == visible, w
        assert len({w for w, _ in observations}) > 1  # the reader saw appends land
        by_seq = await conn.fetch("SELECT ingested_at_ms FROM events ORDER BY seq")
        assert [row[0] for row in by_seq] == sorted(row[0] for row in by_seq)
        assert len(by_seq) == 2000
    finally:
        await conn.close()
        await close_all(stores)


async def test_replicas_appending_the_same_events_store_each_once(
    pg: PostgresBackend, url: str
) -> None:
    stores = await replicas(pg, url, 2)
    batches = [[event(f"e{i}-{j}", f"c{j % 4}", n=j) for j in range(20)] for i in range(30)]

    async def replica(store: Store) -> list[AppendResult]:
        return [await store.append(batch, now_ms=5) for batch in batches]

    try:
        results = await asyncio.gather(*(replica(s) for s in stores))
        stored: Counter[str] = Counter()
        for per_replica in results:
            for batch, result in zip(batches, per_replica, strict=True):
                stored.update(e.event_id for e, s in zip(batch, result.stored, strict=True) if s)
        assert set(stored.values()) == {1} and len(stored) == 600
        for customer in ("c0", "c1", "c2", "c3"):
            agg = await stores[0].meter_aggregate("tokens_sum", customer, 0, BUCKET)
            expected = Decimal(sum(j for j in range(20) if f"c{j % 4}" == customer) * 30)
            assert agg is not None and (agg.count, agg.value) == (150, expected)
    finally:
        await close_all(stores)


async def test_replicas_starting_together_migrate_and_rebuild_once(
    pg: PostgresBackend, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="billing.store.pg_schema")
    caplog.set_level(logging.INFO, logger="billing.store.postgres")
    stores = [PostgresStore(url, METERS, BUCKET, clock=clock_at(100 + i)) for i in range(3)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        files = sorted(f.name for f in (resources.files("billing.store") / "pg_migrations")
                       .iterdir() if f.name.endswith(".sql"))
        recorded = await pg.rows(url, "SELECT version, name FROM schema_migrations ORDER BY 1")
        assert recorded == [(int(f[:4]), f[5:-4]) for f in files]
        messages = [r.message for r in caplog.records]
        assert len([m for m in messages if m.startswith("applied schema migration")]) == len(files)
        assert len([m for m in messages if m.startswith("rebuilding")]) == len(METERS)
        assert len(set(await pg.rows(url, "SELECT built_at_ms FROM meter_state"))) == 1
    finally:
        await close_all(stores)


async def test_appends_and_rebuilds_wait_for_the_counter_and_reads_do_not(
    pg: PostgresBackend, url: str
) -> None:
    store = await opened(pg, url)
    await store.append([event("before", n=1)], now_ms=10)
    other = await asyncpg.connect(url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT * FROM ingest_counter FOR UPDATE")  # another replica's append
        append = asyncio.ensure_future(store.append([event("after", n=2)], now_ms=20))
        rebuild = asyncio.ensure_future(store.rebuild_aggregates(["tokens_sum"]))
        assert await asyncio.wait_for(store.watermark(), 10) == 10
        agg = await asyncio.wait_for(store.meter_aggregate("tokens_sum", "c1", 0, BUCKET), 10)
        assert agg is not None and agg.value == 1
        assert not append.done() and not rebuild.done()
        await tx.rollback()
        assert (await append).watermark == 20
        await rebuild
        agg = await store.meter_aggregate("tokens_sum", "c1", 0, BUCKET)
        assert agg is not None and agg.value == 3
    finally:
        await other.close()
        await store.close()


async def terminate_the_waiting_session(conn: asyncpg.Connection) -> None:
    """End the session of this database that waits for a lock, once one does (polled: the
    server tells no one when a session starts waiting)."""
    for _ in range(3000):
        if await conn.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no session came to wait for the lock")


async def test_a_connection_lost_mid_append_is_unreachable_and_the_pool_recovers(
    pg: PostgresBackend, url: str
) -> None:
    store = await opened(pg, url)
    other = await asyncpg.connect(url)
    try:
        await store.append([event("a", n=1)], now_ms=10)
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT * FROM ingest_counter FOR UPDATE")  # park the next append
        append = asyncio.ensure_future(store.append([event("b", n=2)], now_ms=20))
        await terminate_the_waiting_session(other)
        with pytest.raises(StoreUnreachable):
            await append
        await tx.rollback()
        assert (await store.append([event("b", n=2)], now_ms=30)).stored == (True,)
        agg = await store.meter_aggregate("tokens_sum", "c1", 0, BUCKET)
        assert agg is not None and agg.value == 3
    finally:
        await other.close()
        await store.close()


async def test_every_text_column_compares_bytes_as_sqlite_does(pg: PostgresBackend,
                                                                url: str) -> None:
    await (await opened(pg, url)).close()
    columns = await pg.rows(url, "SELECT table_name, column_name, collation_name"
                                 " FROM information_schema.columns"
                                 " WHERE table_schema = 'public' AND data_type = 'text'")
    assert len(columns) > 30
    assert [c for c in columns if c[2] != "C"] == []  # a later migration forgot COLLATE "C"


async def test_ids_are_listed_in_byte_order_under_a_language_collation(
    pg: PostgresBackend,
) -> None:
    # Under en-US, "a" < "A" < "b" < "B"; SQLite (and Python) order them A B a b.
    url = await pg.location("TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'")
    store = await opened(pg, url)
    ids = ["b", "B", "a", "A", "a-1", "a_1", "Z", "a.1"]
    for customer in ids:
        await store.ensure_customer(customer, 1)
    assert [c.customer_id for c in await store.list_customers(100)] == sorted(ids)
    await store.close()


async def test_migration_0004_keeps_the_rows_and_the_final_statement_guard(
    pg: PostgresBackend,
) -> None:
    url = await pg.location("TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'")
    await pg.at_version(url, 3)
    await pg.execute(url, "INSERT INTO customers VALUES ('a', 1, NULL, NULL),"
                          " ('B', 2, 'pro', NULL)")
    store = await opened(pg, url)
    try:
        assert [(c.customer_id, c.plan) for c in await store.list_customers(10)] == [
            ("B", "pro"), ("a", None)]  # byte order now; en-US put a first
    finally:
        await store.close()
    [(trigger,)] = await pg.rows(url, "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE"
                                      " tgrelid = 'statements'::regclass AND NOT tgisinternal")
    assert trigger.startswith("CREATE TRIGGER final_statements_never_change BEFORE DELETE OR"
                              " UPDATE ON public.statements FOR EACH ROW WHEN ((old.status ="
                              " 'final'::text))")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


async def test_no_server_is_unreachable_and_the_message_hides_the_password() -> None:
    store = PostgresStore(f"postgresql://mp:s3cret@127.0.0.1:{closed_port()}/mp", METERS,
                          BUCKET, connect_timeout_s=2)
    with pytest.raises(StoreUnreachable) as caught:
        await store.open()
    assert "s3cret" not in str(caught.value)
    assert "mp@127.0.0.1" in str(caught.value)
    with pytest.raises(StoreError, match="not open"):
        await store.append([event("a")], 1)


async def test_a_refusing_server_is_a_store_error_not_an_outage(pg: PostgresBackend) -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:5432/no_such_database", METERS,
                          BUCKET)
    with pytest.raises(StoreError) as caught:
        await store.open()
    assert not isinstance(caught.value, StoreUnreachable)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://mp:s3cret@db:5432/meter", "postgresql://mp@db:5432/meter"),
        ("postgresql://mp:p%40ss@[::1]:5432/m?sslmode=require",
         "postgresql://mp@[::1]:5432/m?sslmode=require"),
        ("postgresql://mp@db/meter", "postgresql://mp@db/meter"),
        ("postgres://db/meter", "postgres://db/meter"),
        ("postgresql://:s3cret@db/meter", "postgresql://@db/meter"),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    ("url", "problem"),
    [("mysql://db/meter", "not a postgresql:// URL"), ("meter.db", "not a postgresql:// URL"),
     ("postgresql://mp:s3cret@db:99999/meter", "postgresql://mp@db:99999/meter: Port")],
)
def test_a_bad_url_is_refused_before_connecting(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        PostgresStore(url, METERS, BUCKET)
    assert "s3cret" not in str(caught.value)
