"""bench/ingest.py: the batches it posts are valid for the real ingest validator."""

from __future__ import annotations

from bench.ingest import BATCH, batch_bodies
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
