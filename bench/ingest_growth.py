"""Ingest as the store grows: one `meterproxy run` per engine, measured fresh, filled
through `POST /events/ingest` with 1,000-event batches, and measured again.

The fresh-server figures of `bench.ingest` hold for a store that is still small. A store of
millions of events writes each event into index leaves of its own (10,000 customers), so
the cost per event grows with the store. This script prints, per engine and stage (the
first probe, the fill, the last probe): events/s, the server's CPU per event, and what the
engine wrote per event (SQLite: the process's bytes written, WAL and checkpoints; PostgreSQL:
WAL bytes). PostgreSQL runs on a scratch database (dropped after), with the server's own
settings.

Run: .venv/bin/python -m bench.ingest_growth [--engines sqlite,postgresql] [--fill 1800]
     [--probe 200] [--clients 16] [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from bench.fleet import ADMIN_TOKEN
from bench.ingest import (
    ADMIN_URL,
    ENGINES,
    Server,
    batch_bodies,
    engine_url,
    ingest,
    running_server,
)
from bench.processes import cpu_seconds

Written = Callable[[], Awaitable[int]]  # bytes the engine has written so far


@dataclass(frozen=True)
class Stage:
    name: str  # first probe | fill | last probe
    events: int  # stored
    seconds: float
    cpu_seconds: float
    written: int  # bytes

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def row(self, engine: str, stored_after: int) -> str:
        per_event = max(self.events, 1)
        return (f"| {engine} | {self.name} | {stored_after:,} | {self.per_second:,.0f} |"
                f" {self.cpu_seconds / per_event * 1e6:.1f} | {self.written / per_event:,.0f} |")


def write_bytes(pid: int) -> int:
    """Bytes the process has written to storage (/proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/io has no write_bytes")


def process_written(pid: int) -> Written:
    """`write_bytes` of the process, as a `Written`."""
    async def read() -> int:
        return write_bytes(pid)
    return read


def wal_written(conn: asyncpg.Connection) -> Written:
    """Bytes of WAL the server has written (its insert position)."""
    async def read() -> int:
        return int(await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"))
    return read


async def stage(name: str, server: Server, batches: int, clients: int,
                written: Written) -> Stage:
    bodies = batch_bodies(batches)
    cpu, wrote = cpu_seconds(server.pid), await written()
    done = await ingest(server.admin_url, ADMIN_TOKEN, bodies, clients)
    return Stage(name, done.stored, done.seconds, cpu_seconds(server.pid) - cpu,
                 await written() - wrote)


async def grow(server: Server, fill: int, probe: int, clients: int,
               written: Written) -> list[Stage]:
    return [await stage(name, server, batches, clients, written)
            for name, batches in (("first probe", probe), ("fill", fill), ("last probe", probe))]


@asynccontextmanager
async def engine_written(url: str | None, pid: int) -> AsyncIterator[Written]:
    """What the engine writes: the server process's bytes on SQLite (`url` None), the WAL
    of the PostgreSQL server at `url`."""
    if url is None:
        yield process_written(pid)
        return
    conn = await asyncpg.connect(url)
    try:
        yield wal_written(conn)
    finally:
        await conn.close()


async def one_engine(engine: str, fill: int, probe: int, clients: int,
                     admin_url: str) -> list[Stage]:
    with tempfile.TemporaryDirectory() as tmp:
        async with (engine_url(engine, admin_url) as url,
                    running_server(Path(tmp), url) as server,
                    engine_written(url, server.pid) as written):
            return await grow(server, fill, probe, clients, written)


def table(found: dict[str, list[Stage]], clients: int) -> str:
    lines = [f"ingest as the store grows: 1,000-event batches, {clients} clients, meterproxy"
             " on one core", "",
             "| engine | stage | events stored after | events/s | CPU us/event |"
             " bytes written/event |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for engine, stages in found.items():
        stored = 0
        for s in stages:
            stored += s.events
            lines.append(s.row(engine, stored))
    return "\n".join(lines) + "\n"


async def main(engines: list[str], fill: int, probe: int, clients: int,
               admin_url: str) -> None:
    found = {}
    for engine in engines:
        found[engine] = await one_engine(engine, fill, probe, clients, admin_url)
        for s in found[engine]:
            print(f"{engine} {s.name}: {s.per_second:,.0f} events/s", flush=True)
    print()
    print(table(found, clients))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--fill", type=int, default=1800, help="batches between the probes")
    parser.add_argument("--probe", type=int, default=200, help="batches of each probe")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args()
    asyncio.run(main(args.engines.split(","), args.fill, args.probe, args.clients,
                     args.admin_url))
