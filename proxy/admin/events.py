"""`POST /events/ingest`, `GET /events`, `GET /events/{event_id}` (Dodo-compatible)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import web

from billing.events import StoredEvent, UsageEvent, format_timestamp
from billing.ingest import BatchParser, IngestWindow, InvalidBatch, decode_json, storable_body
from billing.writer import EventsRejected, StoreUnavailable
from proxy.admin.jsonout import json_response
from proxy.admin.params import ApiError, bad_request, not_found, page, time_param

if TYPE_CHECKING:
    from proxy.admin.context import AdminContext

# Matching events are read in pages of this size when a meter filter applies in Python.
_SCAN_PAGE = 500
# One ingest batch is decoded and validated at a time: see `_parse`.
PARSING_TURN = web.AppKey("parsing_turn", asyncio.Lock)


def event_json(stored: StoredEvent, business_id: str) -> dict[str, Any]:
    e = stored.event
    return {
        "business_id": business_id,
        "customer_id": e.customer_id,
        "event_id": e.event_id,
        "event_name": e.event_name,
        "timestamp": format_timestamp(e.timestamp_ms),
        "metadata": dict(e.metadata),
    }


async def ingest(request: web.Request, mp: AdminContext) -> web.Response:
    body = await request.read()
    now = mp.clock()
    window = IngestWindow(mp.config.billing.ingest_past_ms, mp.config.billing.ingest_future_ms)
    try:
        events = await _parse(request.app[PARSING_TURN], body, now, window)
    except InvalidBatch as exc:
        _count_rejected(mp, body)
        raise bad_request(
            str(exc), code="invalid_events", details=[i.to_json() for i in exc.issues]
        ) from None
    try:
        result = await mp.writer.submit_durable(events)
    except StoreUnavailable as exc:
        raise ApiError(503, "store_unavailable", str(exc)) from None
    except EventsRejected as exc:
        # The batch's other events are stored: re-sending it whole is safe (ids dedupe).
        raise ApiError(422, "events_rejected", str(exc), event_ids=list(exc.event_ids)) from None
    return json_response({"ingested_count": result.stored_count})


async def _parse(
    turn: asyncio.Lock, body: bytes, now: int, window: IngestWindow
) -> list[UsageEvent]:
    """The batch's events (InvalidBatch naming its problems), decoded and validated in its
    turn, slice by slice.

    The loop runs every ready task in turn, so batches validated side by side would each
    delay the store's append in flight by a slice, and an append waits on the loop for
    every answer of the database: appends (and so ingest) slowed down as more clients sent
    batches at once. One at a time, an append waits for at most one slice (or one decode).
    Measured with PostgreSQL at 16 clients: 1.07x from the slices, 1.10x more from the turn.
    """
    async with turn:
        parser = BatchParser(decode_json(body), now, window, storable_text=storable_body(body))
        for _ in parser.slices():
            await asyncio.sleep(0)
        return parser.events()


def _count_rejected(mp: AdminContext, body: bytes) -> None:
    """Count a rejected batch's events by name, as far as the body can be read."""
    try:
        items = decode_json(body).get("events", [])
        names = Counter(str(e.get("event_name", "")) for e in items if isinstance(e, dict))
    except (InvalidBatch, AttributeError):
        names = Counter({"": 1})
    for name, n in names.items():
        mp.metrics.count_events(name, "api", "rejected", n)


async def get_event(request: web.Request, mp: AdminContext) -> web.Response:
    stored = await mp.store.get_event(request.match_info["event_id"])
    if stored is None:
        raise not_found("no event with this event_id")
    return json_response(event_json(stored, mp.config.admin.business_id))


async def list_events(request: web.Request, mp: AdminContext) -> web.Response:
    limit, offset = page(request)
    q = request.query
    names = [q["event_name"]] if q.get("event_name") else None
    meter = None
    if q.get("meter_id"):
        meter = next((m for m in mp.config.meters if m.name == q["meter_id"]), None)
        if meter is None:
            raise not_found(f"no meter named {q['meter_id']!r}")
        if names and names != [meter.event_name]:
            raise bad_request("event_name must match the meter's event_name")
        names = [meter.event_name]
    query = dict(
        customer_id=q.get("customer_id") or None,
        event_names=names,
        start_ms=time_param(request, "start"),
        end_ms=time_param(request, "end"),
    )
    if meter is None or meter.filter is None:
        found = await mp.store.list_events(**query, limit=limit, offset=offset)  # type: ignore[arg-type]
    else:
        found = await _filtered(mp, query, meter.filter, limit, offset)
    business = mp.config.admin.business_id
    return json_response({"items": [event_json(e, business) for e in found]})


async def _filtered(
    mp: AdminContext, query: dict[str, Any], predicate: Any, limit: int, offset: int
) -> list[StoredEvent]:
    """Page through events that also pass a meter's filter (applied here, not in SQL)."""
    matched: list[StoredEvent] = []
    scanned = 0
    while len(matched) < offset + limit:
        batch = await mp.store.list_events(**query, limit=_SCAN_PAGE, offset=scanned)
        matched.extend(e for e in batch if predicate(e.event.metadata))
        scanned += len(batch)
        if len(batch) < _SCAN_PAGE:
            break
    return matched[offset : offset + limit]
