"""Three `meterproxy run` processes on one PostgreSQL database, one of them killed mid-traffic.

Clients send proxied requests (each tagged with a request id that its event keeps) and ingest
batches through all three replicas; at a random moment one replica gets SIGKILL. Ingest
batches that fail are retried on a survivor with the same event ids, as a client of the Dodo
API would. Then the 2 s billing periods end, every replica's scheduler closes them (a
`POST /v1/billing/run` on a survivor too) and the test checks, against the database and
what the clients saw:
- every proxied request answered 200 has its event, once (`durability: strict`); the only
  other stored requests are ones the killed replica had in flight;
- every acknowledged ingest event is stored once, and none other;
- each customer has exactly one final statement per period, periods that tile time, and each
  statement's quantities are exactly the stored events of its period; every stored event is
  on a final statement;
- `meterproxy verify` agrees, and the survivors stop cleanly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp.test_utils import TestServer

from billing.events import parse_timestamp
from tests.conftest import AUTH
from tests.fleet.kit import PASSWORD_VAR, fleet_config
from tests.proxy.test_cli import Server, run_cli
from tests.proxy.upstream import Upstream
from tests.store.backends import PostgresBackend

CUSTOMERS = ("c0", "c1", "c2", "c3")


@dataclass
class Seen:
    """What the clients sent and saw answered."""

    sent: dict[str, tuple[int, str]] = field(default_factory=dict)  # rid -> (replica, customer)
    answered: set[str] = field(default_factory=set)  # rids answered 200 in full
    failed: set[str] = field(default_factory=set)  # rids whose request broke off
    acked: dict[str, tuple[str, int]] = field(default_factory=dict)  # ingest id -> (cust, units)


async def proxy_client(session: aiohttp.ClientSession, replica: int, url: str, seen: Seen,
                       ids: itertools.count[int], stop: asyncio.Event) -> None:
    """Requests to one replica until `stop` or until the replica is gone."""
    while not stop.is_set():
        rid, customer = f"r{next(ids)}", random.choice(CUSTOMERS)
        seen.sent[rid] = (replica, customer)
        try:
            async with session.get(f"{url}/v1/echo?rid={rid}",
                                   headers={"X-Customer-Id": customer}) as response:
                await response.read()
                assert response.status == 200
                seen.answered.add(rid)
        except aiohttp.ClientError:
            seen.failed.add(rid)
            return


async def ingest_client(session: aiohttp.ClientSession, admins: list[str], alive: list[bool],
                        seen: Seen, stop: asyncio.Event) -> None:
    """Batches of job.done events, each retried on the next live replica until stored."""
    for turn in itertools.count():
        if stop.is_set():
            return
        batch = [job(random.choice(CUSTOMERS), random.randint(1, 9)) for _ in range(10)]
        for attempt in itertools.count(turn):
            if not alive[attempt % len(admins)]:
                continue
            try:
                async with session.post(f"{admins[attempt % len(admins)]}/events/ingest",
                                        json={"events": batch}, headers=AUTH) as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
        seen.acked.update({e["event_id"]: (e["customer_id"], e["metadata"]["units"])
                           for e in batch})
        await asyncio.sleep(0.05)


def job(customer: str, units: int) -> dict[str, Any]:
    """An ingest event of the units meter with a fresh id."""
    return {"event_id": str(uuid.uuid4()), "customer_id": customer, "event_name": "job.done",
            "metadata": {"units": units}}


async def drive(replicas: list[Server], seen: Seen) -> int:
    """Traffic through all three for about 3 s, one replica killed at a random moment within
    it; returns the killed replica's index."""
    stop = asyncio.Event()
    alive = [True] * len(replicas)
    victim = random.randrange(len(replicas))
    ids = itertools.count()
    async with aiohttp.ClientSession() as session:
        clients = [asyncio.ensure_future(proxy_client(session, i, r.url("proxy"), seen, ids, stop))
                   for i, r in enumerate(replicas) for _ in range(3)]
        admins = [r.url("admin") for r in replicas]
        clients += [asyncio.ensure_future(ingest_client(session, admins, alive, seen, stop))
                    for _ in range(2)]
        await asyncio.sleep(random.uniform(0.5, 2.0))
        alive[victim] = False
        replicas[victim].process.kill()
        await replicas[victim].process.wait()
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*clients)
    return victim


async def stored_events(url: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT event_id, customer_id, event_name, timestamp_ms,"
                                " metadata, source FROM events")
    finally:
        await conn.close()
    return [dict(row) | {"metadata": json.loads(row["metadata"])} for row in rows]


async def finals(session: aiohttp.ClientSession, admin: str, covering_ms: int) -> list[
        dict[str, Any]]:
    """Every final statement, once each customer has one covering `covering_ms`."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with session.post(f"{admin}/v1/billing/run", headers=AUTH) as response:
            assert response.status == 200, await response.text()
        async with session.get(f"{admin}/v1/statements", headers=AUTH,
                               params={"status": "final", "page_size": "100"}) as response:
            items: list[dict[str, Any]] = (await response.json())["items"]
        ends = {c: max((parse_timestamp(s["period_end"]) for s in items
                        if s["customer_id"] == c), default=0) for c in CUSTOMERS}
        if all(end > covering_ms for end in ends.values()):
            return items
        await asyncio.sleep(0.5)  # periods end and turn final on the real clock
    raise AssertionError("the periods of the traffic were not finalised")


def usage(statement: dict[str, Any], meter: str) -> Decimal:
    return sum((Decimal(line["quantity"]) for line in statement["lines"]
                if line["type"] == "usage" and line["meter"] == meter), Decimal(0))


def check_events(events: list[dict[str, Any]], seen: Seen, victim: int) -> None:
    rids = Counter(e["metadata"]["rid"] for e in events if e["source"] == "proxy")
    assert set(rids.values()) == {1}  # nothing stored twice
    assert seen.answered <= set(rids)  # strict durability: every answer's event is stored
    extra = set(rids) - seen.answered
    assert all(seen.sent[rid][0] == victim and rid in seen.failed for rid in extra), extra
    ingested = [(e["event_id"], e["customer_id"], e["metadata"]["units"]) for e in events
                if e["source"] == "api"]
    assert sorted(ingested) == sorted((i, *v) for i, v in seen.acked.items())  # once, no other


def check_statements(statements: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    for customer in CUSTOMERS:
        own = sorted((s for s in statements if s["customer_id"] == customer),
                     key=lambda s: parse_timestamp(s["period_start"]))
        spans = [(parse_timestamp(s["period_start"]), parse_timestamp(s["period_end"]))
                 for s in own]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), spans  # one per period
        mine = [e for e in events if e["customer_id"] == customer]
        assert all(spans[0][0] <= e["timestamp_ms"] < spans[-1][1] for e in mine)
        for statement, (start, end) in zip(own, spans, strict=True):
            inside = [e for e in mine if start <= e["timestamp_ms"] < end]
            calls = sum(e["event_name"] == "api.call" for e in inside)
            units = sum(e["metadata"]["units"] for e in inside if e["event_name"] == "job.done")
            assert (usage(statement, "api_calls"), usage(statement, "units")) == (calls, units)


@pytest.mark.timeout(300)
async def test_three_replicas_one_killed_bill_each_customer_once(
    aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_VAR, "not-needed-with-trust-auth")
    upstream: TestServer = await aiohttp_server(Upstream().app())
    pg = PostgresBackend()
    database = await pg.location()
    configs = [fleet_config(tmp_path / f"replica{i}", f"http://127.0.0.1:{upstream.port}",
                            database, durability="strict") for i in range(3)]
    replicas = list(await asyncio.gather(*(Server.start(c) for c in configs)))
    try:
        seen = Seen()
        victim = await drive(replicas, seen)
        survivors = [r for i, r in enumerate(replicas) if i != victim]
        events = await stored_events(database)  # all durable: strict, or acknowledged
        latest = max(e["timestamp_ms"] for e in events)
        async with aiohttp.ClientSession() as session:
            statements = await finals(session, survivors[0].url("admin"), latest)
        check_events(events, seen, victim)
        check_statements(statements, events)
        print(f"replica {victim} killed; {len(seen.answered)} requests answered,"
              f" {len(seen.failed)} broken off, {len(events)} events stored,"
              f" {len(statements)} final statements")
        assert seen.answered and seen.acked and len(statements) >= len(CUSTOMERS)
        code, out, _ = await run_cli("verify", "-c", str(configs[victim]))
        assert code == 0 and re.fullmatch(r"\d+ final statements verified, 0 differ\n", out), out
        for survivor in survivors:
            assert await survivor.stop() == 0
    finally:
        for replica in replicas:
            if replica.process.returncode is None:
                await replica.stop(signal.SIGKILL)
        await pg.dispose()
