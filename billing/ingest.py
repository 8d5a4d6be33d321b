"""Validate a `POST /events/ingest` batch (Dodo Payments' wire format) into events.

A batch is all or nothing: `parse_batch` either returns every event or raises
`InvalidBatch` listing every offending index and field, so nothing of a rejected
request is ever stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from billing.events import PROXY_ID_PREFIX, MetadataValue, UsageEvent, parse_timestamp

MAX_EVENTS = 1000
MAX_EVENT_ID_CHARS = 256
MAX_EVENT_NAME_CHARS = 256
MAX_METADATA_KEYS = 50
MAX_KEY_CHARS = 100
MAX_VALUE_CHARS = 500
MAX_BODY_BYTES = 5_000_000
# Text with NUL or a lone surrogate (a "\ud800" JSON escape) can be stored by neither
# PostgreSQL nor SQLite's UTF-8; accepted, it would make every later flush fail. So it
# is refused at the door.
NUL_MESSAGE = "must be valid Unicode text without the NUL character"


def unstorable(text: str) -> bool:
    """True for text no store can hold: NUL, or lone surrogates."""
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_CUSTOMER_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


@dataclass(frozen=True)
class Issue:
    index: int | None
    field: str
    message: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "message": self.message}
        if self.index is not None:
            out["index"] = self.index
        return out


class InvalidBatch(ValueError):
    """The batch is malformed; `issues` names every offending index and field."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        first = issues[0]
        where = f"events[{first.index}].{first.field}" if first.index is not None else first.field
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        super().__init__(f"{where}: {first.message}{more}")


@dataclass(frozen=True)
class IngestWindow:
    past_ms: int
    future_ms: int


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(body: bytes) -> Any:
    """Parse JSON with exact numbers; InvalidBatch for anything that is not JSON."""
    try:
        return json.loads(body, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidBatch([Issue(None, "body", f"not valid JSON: {exc}")]) from None


def storable_body(body: bytes) -> bool:
    """True when no text `decode_json(body)` yields can be `unstorable`: the body is ASCII
    without NUL bytes (so it is read as UTF-8) and without \\u escapes, the only way JSON
    text spells NUL or a surrogate (raw control characters are not JSON). A byte scan, so
    that a batch need not check each of its strings; False says nothing."""
    return body.isascii() and b"\\u" not in body and b"\x00" not in body


def parse_batch(
    payload: Any, now_ms: int, window: IngestWindow, *, storable_text: bool = False
) -> list[UsageEvent]:
    """Validate a decoded request body; raise InvalidBatch naming every problem.

    `storable_text`: the caller knows no string of the payload is `unstorable`
    (`storable_body` of the body it was decoded from), so they are not checked one by one.
    """
    parser = BatchParser(payload, now_ms, window, storable_text=storable_text)
    for _ in parser.slices():
        pass
    return parser.events()


class BatchParser:
    """`parse_batch` one slice of events at a time, for a caller on an event loop.

    Validating a 1,000-event batch takes milliseconds; a loop that did it in one go would
    hold up everything else meanwhile, the store's appends included (their statements'
    answers wait for the loop). Such a caller lets other work run between `slices()`.
    The constructor checks the envelope; `events()` gives the events once every slice has
    been read, or raises InvalidBatch naming every problem of the whole batch.
    """

    SLICE = 200  # events per slice: about half a millisecond of validation here

    def __init__(
        self, payload: Any, now_ms: int, window: IngestWindow, *, storable_text: bool = False
    ) -> None:
        if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
            raise InvalidBatch([Issue(None, "events", 'the body must be {"events": [...]}')])
        items = payload["events"]
        if not 1 <= len(items) <= MAX_EVENTS:
            raise InvalidBatch(
                [Issue(None, "events", f"expected 1 to {MAX_EVENTS} events, got {len(items)}")]
            )
        self._items: list[Any] = items
        self._now_ms, self._window = now_ms, window
        self._fast = _FastPath(now_ms, window, storable_text)
        self._issues: list[Issue] = []
        self._events: list[UsageEvent] = []
        self._seen: dict[str, int] = {}
        self._done = 0

    def slices(self) -> Iterator[None]:
        """Validate the events slice by slice; yields after each slice but the last."""
        while True:
            self._read(self._done, min(self._done + self.SLICE, len(self._items)))
            if self._done == len(self._items):
                return
            yield

    def _read(self, start: int, stop: int) -> None:
        fast, issues, seen, events = self._fast, self._issues, self._seen, self._events
        for index in range(start, stop):
            item = self._items[index]
            event = fast.event(item) or _parse_event(
                index, item, self._now_ms, self._window, issues
            )
            if event is None:
                continue
            first = seen.setdefault(event.event_id, index)
            if first != index:
                issues.append(
                    Issue(index, "event_id", f"duplicates the event_id of index {first}")
                )
            events.append(event)
        self._done = stop

    def events(self) -> list[UsageEvent]:
        """Every event of the batch; InvalidBatch if one is invalid. Call after `slices()`."""
        if self._done != len(self._items):
            raise RuntimeError("BatchParser.events() before every slice was read")
        if self._issues:
            raise InvalidBatch(self._issues)
        return self._events


# len(str(n)) <= MAX_VALUE_CHARS for an int n exactly when _INT_LOW < n < _INT_HIGH: compared,
# not printed (printing a large int costs more than the rest of its event's checks).
_INT_HIGH = 10**MAX_VALUE_CHARS
_INT_LOW = -(10 ** (MAX_VALUE_CHARS - 1))


class _FastPath:
    """The fast path of one batch: `event(item)` is the event if it is valid, else None
    (then `_parse_event` says why).

    Accepts exactly what `_parse_event` accepts (a property test holds them together); it
    only skips the bookkeeping that naming problems needs, the per-string storability checks
    when the body was found free of such text, and the parse of a timestamp text already
    seen in the batch (events of one batch often share one).
    """

    def __init__(self, now_ms: int, window: IngestWindow, storable_text: bool) -> None:
        self._now_ms = now_ms
        self._low, self._high = now_ms - window.past_ms, now_ms + window.future_ms
        self._check_text = not storable_text
        self._stamps: dict[str, int | None] = {}

    def event(self, item: Any) -> UsageEvent | None:
        if type(item) is not dict:
            return None
        get = item.get
        event_id, customer_id, event_name = get("event_id"), get("customer_id"), get("event_name")
        if not (
            type(event_id) is str
            and 0 < len(event_id) <= MAX_EVENT_ID_CHARS
            and not event_id.startswith(PROXY_ID_PREFIX)
            and type(customer_id) is str
            and _CUSTOMER_ID.match(customer_id)
            and type(event_name) is str
            and 0 < len(event_name) <= MAX_EVENT_NAME_CHARS
            and not (self._check_text and (unstorable(event_id) or unstorable(event_name)))
        ):
            return None
        stamp = get("timestamp")
        ts = self._now_ms if stamp is None else self._timestamp(stamp)
        if ts is None:
            return None
        metadata = get("metadata")
        if metadata is None:
            metadata = {}
        elif type(metadata) is not dict or not self._plain(metadata):
            return None
        return UsageEvent(event_id, customer_id, event_name, ts, metadata, "api")

    def _timestamp(self, stamp: Any) -> int | None:
        """The timestamp text in ms if it is one and within the window, else None."""
        if type(stamp) is not str:
            return None
        if stamp in self._stamps:
            return self._stamps[stamp]
        try:
            ts: int | None = parse_timestamp(stamp)
        except ValueError:
            ts = None
        if ts is not None and not self._low <= ts <= self._high:
            ts = None
        self._stamps[stamp] = ts
        return ts

    def _plain(self, metadata: dict[str, Any]) -> bool:
        if len(metadata) > MAX_METADATA_KEYS:
            return False
        check_text = self._check_text
        for key, value in metadata.items():
            if len(key) > MAX_KEY_CHARS or (check_text and unstorable(key)):
                return False
            kind = type(value)
            if kind is str:
                if len(value) > MAX_VALUE_CHARS or (check_text and unstorable(value)):
                    return False
            elif kind is int:
                if not _INT_LOW < value < _INT_HIGH:
                    return False
            elif kind is Decimal:
                if len(str(value)) > MAX_VALUE_CHARS:
                    return False
            elif kind is not bool:
                return False
        return True


def _parse_event(
    index: int, item: Any, now_ms: int, window: IngestWindow, issues: list[Issue]
) -> UsageEvent | None:
    if not isinstance(item, dict):
        issues.append(Issue(index, "", "each event must be an object"))
        return None
    before = len(issues)

    def bad(field: str, message: str) -> None:
        issues.append(Issue(index, field, message))

    event_id = _text(item.get("event_id"), MAX_EVENT_ID_CHARS, "event_id", bad)
    if event_id and event_id.startswith(PROXY_ID_PREFIX):
        bad("event_id", f"ids starting {PROXY_ID_PREFIX!r} are reserved for proxy events")
    customer_id = item.get("customer_id")
    if not isinstance(customer_id, str) or not _CUSTOMER_ID.match(customer_id):
        bad("customer_id", "must be 1-128 characters of A-Z a-z 0-9 . _ : @ -")
    event_name = _text(item.get("event_name"), MAX_EVENT_NAME_CHARS, "event_name", bad)
    timestamp = _timestamp(item.get("timestamp"), now_ms, window, bad)
    metadata = _metadata(item.get("metadata"), bad)
    if len(issues) > before:
        return None
    assert event_id and event_name and isinstance(customer_id, str) and timestamp is not None
    return UsageEvent(event_id, customer_id, event_name, timestamp, metadata, "api")


def _text(value: Any, limit: int, field: str, bad: Any) -> str | None:
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        bad(field, f"required: a string of 1 to {limit} characters")
        return None
    if unstorable(value):
        bad(field, NUL_MESSAGE)
        return None
    return value


def _timestamp(value: Any, now_ms: int, window: IngestWindow, bad: Any) -> int | None:
    if value is None:
        return now_ms
    if not isinstance(value, str):
        bad("timestamp", "must be an ISO-8601 date-time string")
        return None
    try:
        ms = parse_timestamp(value)
    except ValueError:
        bad("timestamp", f"{value!r} is not an ISO-8601 date-time")
        return None
    if not now_ms - window.past_ms <= ms <= now_ms + window.future_ms:
        bad(
            "timestamp",
            f"{value!r} is outside the ingest window "
            f"({window.past_ms // 1000}s past, {window.future_ms // 1000}s future)",
        )
        return None
    return ms


def _metadata(value: Any, bad: Any) -> dict[str, MetadataValue]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        bad("metadata", "must be a flat object of strings, numbers and booleans")
        return {}
    if len(value) > MAX_METADATA_KEYS:
        bad("metadata", f"at most {MAX_METADATA_KEYS} keys, got {len(value)}")
    for key, v in value.items():
        if len(key) > MAX_KEY_CHARS:
            bad(f"metadata.{key[:20]}...", f"keys are at most {MAX_KEY_CHARS} characters")
        if unstorable(key) or (isinstance(v, str) and unstorable(v)):
            safe = key.encode("utf-8", "replace").decode().replace("\x00", "?")
            bad(f"metadata.{safe}", NUL_MESSAGE)
            continue
        if isinstance(v, bool):
            continue
        if isinstance(v, int | Decimal | str):
            if len(str(v)) > MAX_VALUE_CHARS:
                bad(f"metadata.{key}", f"values are at most {MAX_VALUE_CHARS} characters")
            continue
        bad(f"metadata.{key}", "values must be strings, numbers or booleans (flat)")
    return value
