"""`POST /events/ingest` throughput: events per second stored, 1,000-event batches from
several concurrent clients. Bodies are encoded before the clock starts; each 200 arrives
only once its events are durable, and the stored count comes from `ingested_count`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.loadgen import customer_id
from billing.events import format_timestamp, now_ms

BATCH = 1_000
CONCURRENCY = 4


@dataclass(frozen=True)
class Ingested:
    sent: int  # events posted
    stored: int  # sum of ingested_count
    seconds: float

    @property
    def per_second(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0


def event(run: str, n: int, timestamp: str) -> dict[str, Any]:
    """The n-th event of a run: names and metadata of the reference meters, in turn."""
    kind = n % 3
    base = {"event_id": f"bench-{run}-{n}", "customer_id": customer_id(n), "timestamp": timestamp}
    if kind == 0:
        return {**base, "event_name": "seats.reported", "metadata": {"seats": n % 40}}
    if kind == 1:
        return {
            **base,
            "event_name": "llm.tokens",
            "metadata": {"model": "bench", "input_tokens": 9, "output_tokens": 100 + n % 900},
        }
    return {**base, "event_name": "bandwidth", "metadata": {"bytes": 512 + n % 100_000}}


def batch_bodies(batches: int, run: str | None = None) -> list[bytes]:
    """`batches` request bodies of BATCH events each, every event_id unique."""
    run = run or uuid.uuid4().hex[:12]
    stamp = format_timestamp(now_ms())
    return [
        json.dumps({"events": [event(run, b * BATCH + i, stamp) for i in range(BATCH)]}).encode()
        for b in range(batches)
    ]


async def ingest(admin_url: str, token: str, bodies: list[bytes]) -> Ingested:
    """Post every body (CONCURRENCY at a time); RuntimeError on any non-200 answer."""
    queue = list(reversed(bodies))
    stored = [0]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as session:
        started = time.perf_counter()
        await asyncio.gather(
            *(_poster(session, admin_url, queue, stored) for _ in range(CONCURRENCY))
        )
        seconds = time.perf_counter() - started
    return Ingested(len(bodies) * BATCH, stored[0], seconds)


async def _poster(
    session: aiohttp.ClientSession, admin_url: str, queue: list[bytes], stored: list[int]
) -> None:
    while queue:
        body = queue.pop()
        async with session.post(f"{admin_url}/events/ingest", data=body) as response:
            answer = await response.text()
            if response.status != 200:
                raise RuntimeError(f"ingest answered {response.status}: {answer[:300]}")
            stored[0] += int(json.loads(answer)["ingested_count"])
