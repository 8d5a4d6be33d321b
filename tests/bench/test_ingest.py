"""bench/ingest.py: the batches it posts are valid for the real ingest validator."""

from __future__ import annotations

from pathlib import Path

from bench.ingest import BATCH, Ingested, Served, batch_bodies, serve_and_ingest, summary
from billing.events import now_ms
from billing.ingest import IngestWindow, decode_json, parse_batch

WINDOW = IngestWindow(past_ms=3_600_000, future_ms=300_000)


def test_every_batch_passes_validation_with_unique_ids() -> None:
    bodies = batch_bodies(3, run="t")
    batches = [parse_batch(decode_json(body), now_ms(), WINDOW) for body in bodies]
    ids = {event.event_id for batch in batches for event in batch}
    assert [len(batch) for batch in batches] == [BATCH] * 3
    assert len(ids) == 3 * BATCH


def test_events_feed_the_reference_meters() -> None:
    events = parse_batch(decode_json(batch_bodies(1, run="t")[0]), now_ms(), WINDOW)
    keys = {e.event_name: set(e.metadata) for e in events}
    assert keys["seats.reported"] == {"seats"}
    assert "output_tokens" in keys["llm.tokens"]
    assert keys["bandwidth"] == {"bytes"}
    assert len({e.customer_id for e in events}) == BATCH  # one per customer in a batch


def test_two_runs_never_share_an_event_id() -> None:
    first, second = batch_bodies(1)[0], batch_bodies(1)[0]
    ids = [
        {e.event_id for e in parse_batch(decode_json(body), now_ms(), WINDOW)}
        for body in (first, second)
    ]
    assert not ids[0] & ids[1]


def served(rate: float, cpu_us: float) -> Served:
    return Served(Ingested(1000, 1000, 1000 / rate), cpu_us * 1000 / 1e6)


def test_the_summary_gives_medians_ranges_and_ratios_to_the_first_tree() -> None:
    runs = {
        ("sqlite", "before"): [served(100, 20), served(200, 10), served(150, 30)],
        ("sqlite", "this"): [served(200, 10), served(300, 10), served(150, 15)],
    }
    table = summary(runs, ["sqlite"], ["before", "this"])
    assert "meterproxy on one core" in table
    rows = [line for line in table.splitlines() if line.startswith("| sqlite")]
    assert rows[0] == "| sqlite | before | 150 (100-200) | 20.0 (10.0-30.0) | 1.00 (1.00-1.00)" \
                      " | 1.00 (1.00-1.00) |"
    # Ratios are taken round by round (2.0, 1.5, 1.0), then summarised.
    assert rows[1] == "| sqlite | this | 200 (150-300) | 10.0 (10.0-15.0) | 1.50 (1.00-2.00)" \
                      " | 0.50 (0.50-1.00) |"


async def test_a_run_stores_every_posted_event_through_meterproxy(tmp_path: Path) -> None:
    done = await serve_and_ingest(tmp_path, batch_bodies(2, run="t"), None)
    assert (done.ingested.sent, done.ingested.stored) == (2 * BATCH, 2 * BATCH)
    assert done.cpu_seconds > 0
