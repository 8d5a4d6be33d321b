"""Fleet mode inside one process: replicas (MeterProxy instances) on one PostgreSQL database,
their /metrics, and a replica that starts while PostgreSQL is down."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from billing.settings import ConfigError
from billing.store.postgres import PostgresStore
from proxy.app import MeterProxy, store_for
from proxy.config import Config, load_config, parse_config
from tests.conftest import AUTH, Running, StartProxy
from tests.fleet.kit import PASSWORD_VAR, fleet_config
from tests.proxy.scrape import ingest, scrape
from tests.proxy.test_config import BASE, line_of
from tests.proxy.upstream import Upstream
from tests.store.backends import PostgresBackend
from tests.store.pg_cluster import Cluster

ENV = {PASSWORD_VAR: "s3cret-password"}


@pytest.fixture
async def upstream(aiohttp_server: Any) -> TestServer:
    server: TestServer = await aiohttp_server(Upstream().app())
    return server


@pytest.fixture
async def database() -> AsyncIterator[str]:
    backend = PostgresBackend()
    yield await backend.location()
    await backend.dispose()


def replica_config(tmp_path: Path, name: str, upstream: TestServer, url: str,
                   cycle: str = "2s") -> Config:
    path = fleet_config(tmp_path / name, f"http://127.0.0.1:{upstream.port}", url, cycle=cycle)
    return load_config(path, environ=ENV)


ACME = {"X-Customer-Id": "acme"}


async def call(running: Running, rid: str, headers: dict[str, str]) -> None:
    """A proxied request tagged `rid`, answered 200."""
    async with running.session.get(f"{running.proxy_url}/v1/echo?rid={rid}",
                                   headers=headers) as response:
        assert response.status == 200, await response.text()
        await response.read()


async def usage_on(running: Running, meter: str, expected: float) -> float | None:
    """The meter's fleet-wide usage on the replica's /metrics, once it reads `expected`
    (the collector refreshes at most once a second)."""
    found = None
    for _ in range(100):
        found = (await scrape(running)).value("meterproxy_meter_usage", meter=meter)
        if found == expected:
            break
        await asyncio.sleep(0.1)
    return found


# ------------------------------------------------------------------ configuration


def test_storage_url_takes_its_password_from_the_environment(tmp_path: Path) -> None:
    url = "postgresql://meter@db.internal:5432/meterproxy"
    config = load_config(fleet_config(tmp_path / "r", "http://127.0.0.1:9", url), environ=ENV)
    assert config.storage.url == "postgresql://meter:s3cret-password@db.internal:5432/meterproxy"
    store = store_for(config)
    assert isinstance(store, PostgresStore)


@pytest.mark.parametrize(("url", "problem"), [
    ("mysql://meter:${env.PW}@db/meterproxy", "not a postgresql:// URL"),
    ("postgresql://meter:${env.PW}@db:99999/meterproxy", "Port out of range"),
    ("postgresql://meter:${env.NOT_SET_ANYWHERE}@db/meterproxy",
     "environment variable NOT_SET_ANYWHERE is not set"),
])
def test_a_bad_storage_url_names_its_line_and_hides_the_password(url: str, problem: str) -> None:
    text = BASE.replace("  path: x.db\n", f"  path: x.db\n  url: {url}\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "bad.yaml", environ={"PW": "s3cret"})
    [line] = [p.render("bad.yaml") for p in caught.value.problems]
    assert line.startswith(f"bad.yaml:{line_of(text, 'url:')}: storage.url: ")
    assert problem in line and "s3cret" not in line


# ------------------------------------------------------------------------ metrics


async def test_every_replica_shows_fleet_wide_usage_and_its_own_requests(
    start_proxy: StartProxy, upstream: TestServer, database: str, tmp_path: Path
) -> None:
    # Monthly periods: the usage on /metrics is the open period's, and all of it is in one.
    a, b = [await start_proxy("", config=replica_config(tmp_path, name, upstream, database,
                                                        cycle="monthly")) for name in "ab"]
    for i in range(5):
        await call(a, f"r{i}", ACME)
    assert await ingest(b, *({"event_id": f"j{i}", "customer_id": "acme",
                              "event_name": "job.done", "metadata": {"units": 4}}
                             for i in range(3))) == 3
    await a.flush()
    for replica in (a, b):
        assert await usage_on(replica, "api_calls", 5) == 5
        assert await usage_on(replica, "units", 12) == 12
    requests = [(await scrape(r)).value("meterproxy_requests_total", rule="calls",
                                        status_class="2xx") for r in (a, b)]
    assert requests == [5, 0]  # proxy figures are each replica's own
    assert (await scrape(a)).value("meterproxy_store_spooled_events") == 0


# ------------------------------------------------------- PostgreSQL down at start


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    server = Cluster()
    server.create()
    yield server
    server.destroy()


async def issue_key(config: Config, customer: str) -> str:
    """Run a replica on `config` for as long as it takes to issue a key to `customer`."""
    mp = MeterProxy(config, registry=CollectorRegistry())
    await mp.start()
    try:
        async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{mp.port('admin')}/v1/customers/{customer}/keys", headers=AUTH
        ) as response:
            assert response.status in (200, 201), await response.text()
            key: str = (await response.json())["key"]
    finally:
        await mp.stop()
    return key


async def test_a_replica_started_while_postgresql_is_down_proxies_and_catches_up(
    start_proxy: StartProxy, upstream: TestServer, cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start_if_stopped()
    backend = PostgresBackend(cluster.admin_url)
    config = replica_config(tmp_path, "r", upstream, await backend.location())
    key = {"Authorization": f"Bearer {await issue_key(config, 'acme')}"}  # known from then on
    await cluster.stop("fast")
    try:
        running = await start_proxy("", config=config)
        async with running.session.get(f"{running.admin_url}/healthz") as response:
            assert response.status == 200
        for i in range(4):
            await call(running, f"r{i}", key)
        await running.flush()  # durable: in the spool
        assert running.mp.spooled == 4
        assert (await scrape(running)).value("meterproxy_store_spooled_events") == 4
        async with running.session.get(f"{running.admin_url}/v1/customers",
                                       headers=AUTH) as response:
            assert response.status == 503  # the store is not open yet
        await cluster.start()
        async with asyncio.timeout(60):
            while running.mp.spooled:  # noqa: ASYNC110 (the spool announces nothing)
                await asyncio.sleep(0.05)
        events = await running.events()
        assert sorted(e["metadata"]["rid"] for e in events) == ["r0", "r1", "r2", "r3"]
        assert {e["customer_id"] for e in events} == {"acme"}
        await call(running, "r4", key)  # straight to PostgreSQL now
        assert len(await running.events()) == 5 and running.mp.spooled == 0
    finally:
        await cluster.start_if_stopped()
        await backend.dispose()


async def test_stopping_postgresql_under_load_loses_nothing_and_counts_nothing_twice(
    start_proxy: StartProxy, upstream: TestServer, cluster: Cluster, tmp_path: Path
) -> None:
    await cluster.start_if_stopped()
    backend = PostgresBackend(cluster.admin_url)
    url = await backend.location()
    try:
        replicas = [await start_proxy("", config=replica_config(tmp_path, name, upstream, url))
                    for name in ("a", "b")]
        answered: list[str] = []
        acked: list[str] = []
        ids = itertools.count()
        stop = asyncio.Event()

        async def calls(running: Running) -> None:
            while not stop.is_set():
                rid = f"r{next(ids)}"
                await call(running, rid, ACME)
                answered.append(rid)

        async def ingests(running: Running) -> None:
            while not stop.is_set():
                batch = [f"j{next(ids)}" for _ in range(5)]
                await ingest(running, *({"event_id": e, "customer_id": "acme",
                                         "event_name": "job.done", "metadata": {"units": 1}}
                                        for e in batch))
                acked.extend(batch)

        async def outage() -> None:
            while len(answered) < 100:  # noqa: ASYNC110 (polls the clients' progress)
                await asyncio.sleep(0.01)
            await cluster.stop("immediate")
            spooling = len(answered)
            while len(answered) < spooling + 200:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            assert any(r.mp.spooled for r in replicas)  # the outage sent events to the spools
            await cluster.start()
            resumed = len(answered)
            while len(answered) < resumed + 100:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            stop.set()

        clients = [c for r in replicas for c in (calls(r), calls(r), ingests(r))]
        await asyncio.gather(outage(), *clients)
        async with asyncio.timeout(60):
            while any(r.mp.spooled for r in replicas):  # noqa: ASYNC110 (no announcement)
                await asyncio.sleep(0.05)
        for running in replicas:
            await running.flush()
        stored = await backend.rows(url, "SELECT event_id, metadata FROM events")
        rids = Counter(json.loads(m)["rid"] for _, m in stored if "rid" in m)
        assert rids == Counter(answered)  # every answered request once, nothing else
        assert Counter(e for e, _ in stored if e.startswith("j")) == Counter(acked)
    finally:
        await cluster.start_if_stopped()
        await backend.dispose()
