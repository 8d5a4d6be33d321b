"""SIGKILL under load: acknowledged ingests are never lost, nothing is stored twice.

Each round starts `meterproxy run` on one SQLite file, drives proxy traffic and ingest
batches at it, kills it with SIGKILL at a random moment, restarts it on the same file
and checks the promises:
- every event of an acknowledged `POST /events/ingest` is stored, exactly once;
- a proxy exchange whose response completed more than `flush_interval` (plus a
  scheduling margin) before the kill has its events stored; with `durability: strict`
  every completed response has them (no margin);
- no exchange is stored twice; the store opens cleanly (integrity_check).
METERPROXY_CRASH_ROUNDS sets the number of kill points (default 8; the issue note
reports a run with 50). Figures are printed per round (pytest -s shows them).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import AUTH, write_config
from tests.proxy.test_cli import Server
from tests.proxy.upstream import Upstream

ROUNDS = int(os.environ.get("METERPROXY_CRASH_ROUNDS", "8"))
FLUSH_MS = 50
MARGIN_S = 0.5  # scheduling slack on a shared 2-core machine, on top of flush_interval

RULES = """\
rules:
  - name: calls
    match: {path: /v1/**}
    event_name: api.call
    metadata:
      rid: ${request.query.rid}
"""


@dataclass
class Load:
    responses: dict[str, float] = field(default_factory=dict)  # rid -> completed at
    acked: set[str] = field(default_factory=set)  # ingested event ids, acknowledged
    sent_requests: int = 0
    sent_events: int = 0


async def drive(proxy: str, admin: str, load: Load, stop: asyncio.Event, ids: Any) -> None:
    async with aiohttp.ClientSession() as session:

        async def calls() -> None:
            while not stop.is_set():
                rid = f"r{next(ids)}"
                load.sent_requests += 1
                try:
                    async with session.get(
                        f"{proxy}/v1/echo?rid={rid}", headers={"X-Customer-Id": "acme"}
                    ) as r:
                        await r.read()
                        if r.status == 200:
                            load.responses[rid] = time.monotonic()
                except aiohttp.ClientError:
                    return

        async def ingests() -> None:
            while not stop.is_set():
                batch = [f"i{next(ids)}" for _ in range(20)]
                load.sent_events += len(batch)
                body = {
                    "events": [
                        {"event_id": e, "customer_id": "acme", "event_name": "seats.reported"}
                        for e in batch
                    ]
                }
                try:
                    async with session.post(f"{admin}/events/ingest", json=body, headers=AUTH) as r:
                        if r.status == 200:
                            load.acked.update(batch)
                except aiohttp.ClientError:
                    return

        await asyncio.gather(*(calls() for _ in range(6)), *(ingests() for _ in range(2)))


def stored(db: Path) -> tuple[list[str], list[str]]:
    """(proxy rids, ingested event ids) as stored, duplicates kept."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT event_id, source, metadata FROM events").fetchall()
    rids = [m.split('"rid":"')[1].split('"')[0] for _, source, m in rows if source == "proxy"]
    ingested = [event_id for event_id, source, _ in rows if source == "api"]
    return rids, ingested


@pytest.mark.parametrize("durability", ["batched", "strict"])
async def test_sigkill_at_random_moments(
    aiohttp_server: Any, tmp_path: Path, durability: str
) -> None:
    up = Upstream()
    server: TestServer = await aiohttp_server(up.app())
    config = write_config(
        tmp_path,
        f"http://127.0.0.1:{server.port}",
        rules=RULES,
        proxy_extra=f"durability: {durability}",
    )
    config.write_text(
        config.read_text().replace("flush_interval: 10ms", f"flush_interval: {FLUSH_MS}ms")
    )
    db = tmp_path / "meterproxy.db"
    rng = random.Random(1234)
    ids = itertools.count()
    totals = Load()
    margin = 0.0 if durability == "strict" else FLUSH_MS / 1000 + MARGIN_S
    for round_ in range(ROUNDS):
        child = await Server.start(config)
        load, stop = Load(), asyncio.Event()
        driver = asyncio.ensure_future(
            drive(child.url("proxy"), child.url("admin"), load, stop, ids)
        )
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        child.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await child.process.wait()
        stop.set()
        await driver
        rids, ingested = stored(db)
        # nothing stored twice
        assert len(rids) == len(set(rids))
        assert len(ingested) == len(set(ingested))
        # acknowledged ingests are never lost
        assert load.acked <= set(ingested)
        # proxy events of responses completed well before the kill are stored
        due = {rid for rid, at in load.responses.items() if at < killed_at - margin}
        missing = due - set(rids)
        assert not missing, f"round {round_}: {len(missing)} exchanges lost"
        lost = len(set(load.responses) - set(rids))
        print(
            f"{durability} round {round_}: requests {load.sent_requests}, "
            f"responses {len(load.responses)}, proxy events lost {lost}, "
            f"ingest acked {len(load.acked)}/{load.sent_events}, duplicates 0"
        )
        totals.sent_requests += load.sent_requests
        totals.responses.update(load.responses)
        totals.acked |= load.acked
    # the store opens cleanly after all of it and still holds everything acknowledged
    child = await Server.start(config)
    assert await child.stop() == 0
    rids, ingested = stored(db)
    assert totals.acked <= set(ingested)
    print(
        f"{durability}: {ROUNDS} kill points, {totals.sent_requests} requests, "
        f"{len(rids)} proxy events stored, {len(totals.acked)} ingested events acked"
    )
