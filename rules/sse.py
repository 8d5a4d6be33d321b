"""An incremental server-sent events parser (WHATWG EventSource rules).

Feed it the decoded body in chunks split anywhere; it returns the events completed
by each chunk. It never buffers the stream: it keeps only the current unfinished
line and the current event's data, and drops (but reports) an event whose data is
larger than `limit`, so a stream of any length runs in bounded memory.
"""

from __future__ import annotations

from typing import NamedTuple

_BOM = b"\xef\xbb\xbf"
_DATA_PREFIX = len(b"data: ")  # an unfinished line may exceed `limit` by this much


class SseEvent(NamedTuple):
    """One dispatched event.

    `data` is its data lines joined with b"\\n", as UTF-8 bytes; `event` its type
    ("message" unless an `event:` line named one). `oversized` events carry no data:
    theirs was larger than the parser's limit.
    """

    # A NamedTuple, not a frozen dataclass: one is made per event on the streaming hot
    # path, and a frozen dataclass takes about five times as long to build.

    data: bytes
    event: str = "message"
    oversized: bool = False


class SseParser:
    """Turns a byte stream into `SseEvent`s; `id:` and `retry:` lines are ignored."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._line: list[bytes] = []  # pieces of the unfinished line
        self._line_size = 0
        self._line_head: bytes | None = None  # set once the unfinished line is too long
        self._skip_lf = False  # the last chunk ended in "\r": a leading "\n" ends no line
        self._first = True
        self._data: list[bytes] = []
        self._data_size = 0
        self._oversized = False
        self._type = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events that `chunk` completes (often none)."""
        if self._line or self._line_head is not None or self._skip_lf or self._first:
            return self._feed_lines(chunk)
        if b"\r" in chunk:
            return self._feed_lines(chunk)
        return self._feed_lf(chunk)

    def between_events(self) -> bool:
        """Whether no line or event is pending: the next byte starts a line of a new event.

        Text that ends in a blank line ("\n\n") leaves the parser so, whatever it held
        before and whatever line endings the text uses. From here, such text (whole
        events, each within the limit) leaves the parser as it is now: a caller that
        knows its events hold nothing it wants may pass over it without feeding it."""
        return not (
            self._line or self._data or self._type or self._oversized
            or self._first or self._skip_lf or self._line_head is not None
        )

    def _feed_lf(self, chunk: bytes) -> list[SseEvent]:
        """`feed` for the usual case, made cheap: no line is pending and the chunk ends
        its lines with "\\n" only. Same outcome as `_feed_lines`, fewer calls per line."""
        events: list[SseEvent] = []
        lines = chunk.split(b"\n")
        tail = lines.pop()  # b"" when the chunk ends a line
        for line in lines:
            if not line:
                self._dispatch(events)
            elif line.startswith(b"data:"):
                self._add_data(line[6:] if line[5:6] == b" " else line[5:])
            elif line[0] != 0x3A:  # ":" starts a comment
                self._field(line)
        if tail:
            self._keep(tail)
        return events

    def _feed_lines(self, chunk: bytes) -> list[SseEvent]:
        """`feed` for any chunk in any state."""
        events: list[SseEvent] = []
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        lines = chunk.splitlines(keepends=True)  # splits at \r\n, \n and \r only (bytes)
        tail = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
        for line in lines:
            self._take_line(line.rstrip(b"\r\n"), events)
        if tail:
            self._keep(tail)
        elif lines:
            self._skip_lf = lines[-1].endswith(b"\r")
        return events

    def finish(self) -> list[SseEvent]:
        """The events still pending once the stream has ended completely.

        Lenient on purpose: WHATWG discards an event whose blank line never came, but
        upstreams often end the stream right after the last data line, and that event
        usually carries the usage.
        """
        events: list[SseEvent] = []
        if self._line or self._line_head is not None:
            self._take_line(b"", events)
        self._dispatch(events)
        return events

    def _keep(self, piece: bytes) -> None:
        """Hold part of an unfinished line, or only its start once it is too long."""
        if self._line_head is not None:
            return
        self._line.append(piece)
        self._line_size += len(piece)
        # The first line may start with a byte-order mark, which `_take_line` drops: room
        # for it, and the head taken after it, or a long first data line would not be seen.
        room = self._limit + _DATA_PREFIX + (len(_BOM) if self._first else 0)
        if self._line_size > room:
            held = b"".join(self._line)
            if self._first:
                held = held.removeprefix(_BOM)
            self._line_head = held[:5]  # enough to tell "data:" lines
            self._line.clear()

    def _take_line(self, end: bytes, events: list[SseEvent]) -> None:
        """Process one whole line: the held pieces plus `end` (without its line ending)."""
        head = self._line_head
        line = b"".join((*self._line, end)) if self._line else end
        self._line.clear()
        self._line_size = 0
        self._line_head = None
        if self._first:
            self._first = False
            line = line.removeprefix(_BOM)  # a stream may start with a byte-order mark
        if head is not None:
            self._oversized = self._oversized or head.startswith(b"data:")
        elif not line:
            self._dispatch(events)
        elif not line.startswith(b":"):  # ":" starts a comment
            self._field(line)

    def _field(self, line: bytes) -> None:
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._add_data(value)
        elif name == b"event":
            self._type = value

    def _add_data(self, value: bytes) -> None:
        if self._oversized:
            return
        self._data_size += len(value) + (1 if self._data else 0)  # joined with "\n"
        if self._data_size > self._limit:
            self._oversized = True
            self._data.clear()
        else:
            self._data.append(value)

    def _dispatch(self, events: list[SseEvent]) -> None:
        data = self._data
        if data or self._oversized:
            kind = self._type.decode("utf-8", "replace") if self._type else "message"
            joined = data[0] if len(data) == 1 else b"\n".join(data)
            events.append(SseEvent(joined, kind, self._oversized))
        self._data.clear()
        self._data_size = 0
        self._oversized = False
        self._type = b""
