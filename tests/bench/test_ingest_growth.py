"""bench/ingest_growth.py: each stage counts what a real server stored, its CPU and writes."""

from __future__ import annotations

import pytest

from bench.ingest import ADMIN_URL, BATCH
from bench.ingest_growth import Stage, one_engine, table


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_the_stages_measure_a_store_that_grows(engine: str) -> None:
    # CPU time reads in clock ticks (10 ms): every stage stores enough events to take more
    # than one even at PostgreSQL's 6 to 7 us of meterproxy CPU per event (one batch did not).
    stages = await one_engine(engine, fill=5, probe=4, clients=2, admin_url=ADMIN_URL)
    assert [(s.name, s.events) for s in stages] == [
        ("first probe", 4 * BATCH), ("fill", 5 * BATCH), ("last probe", 4 * BATCH)]
    assert all(s.seconds > 0 and s.cpu_seconds > 0 for s in stages)
    if engine == "postgresql":  # WAL grows with every commit (a file system may defer writes)
        assert all(s.written > 0 for s in stages)


def test_the_table_counts_the_stored_events_after_each_stage() -> None:
    stages = [Stage("first probe", 2_000, 0.1, 0.03, 3_000_000),
              Stage("fill", 10_000, 1.0, 0.2, 20_000_000)]
    rows = table({"sqlite": stages}, 16).splitlines()
    assert rows[0].startswith("ingest as the store grows: 1,000-event batches, 16 clients")
    assert rows[-2] == "| sqlite | first probe | 2,000 | 20,000 | 15.0 | 1,500 |"
    assert rows[-1] == "| sqlite | fill | 12,000 | 10,000 | 20.0 | 2,000 |"
