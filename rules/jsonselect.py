"""Selecting values at dotted JSON paths from a streamed request or response body.

`JsonPaths(paths, limit)` is built once per configuration from every path the rules
read (`request.json.PATH` or `response.json.PATH`); `tap()` makes one `BodyTap` per
body. The proxy feeds the tap each chunk as it goes by on the wire and calls
`finish()` when the body ends; the result says, per path, what was found.

A path such as "items.0.id" walks object keys; a digit segment also indexes a list.
Values keep their JSON type (str, bool, int, Decimal for other numbers, list, dict);
a JSON null counts as not found. Bodies are decoded first (rules/decode.py).

Plain JSON takes the cheap road while the decoded body stays within `limit`: keep
the chunks, parse once at the end. A larger body switches to an incremental parse
(ijson, yajl) that keeps only the selected values, so any size yields them; a
selected value larger than `limit` is TOO_LARGE. A text/event-stream body is read
event by event (rules/sse.py): each path takes its value from the last event that
holds it.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol, TypeAlias, cast

import ijson

from rules.decode import DecodeError, Decoder, make_decoder
from rules.sse import SseEvent, SseParser

JsonValue: TypeAlias = str | bool | int | Decimal | list[Any] | dict[str, Any]

_INDEX = re.compile(r"0|[1-9][0-9]*")  # canonical list indexes only: "01" is a key
_PARSE_ERRORS = (ijson.JSONError, ValueError)  # ValueError covers json's and UTF-8 errors


class Outcome(enum.Enum):
    FOUND = "found"
    MISSING = "missing"  # the whole body was read: the selector's default applies
    INCOMPLETE = "incomplete"  # the body was cut short before the value was seen
    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    ENCODING = "encoding"


@dataclass(frozen=True, slots=True)
class PathResult:
    """What one path yielded; `value` is set only when `outcome` is FOUND."""

    outcome: Outcome
    value: JsonValue | None = None


# every outcome but FOUND carries no value, so one shared result each will do
_SETTLED: dict[Outcome, PathResult] = {
    outcome: PathResult(outcome) for outcome in Outcome if outcome is not Outcome.FOUND
}


class BodyTap(Protocol):
    def feed(self, chunk: bytes) -> None:
        """Take the next chunk, as on the wire (any boundaries). Never raises."""
        ...

    def finish(self, complete: bool) -> dict[str, PathResult]:
        """A result for every path; `complete` False: the body was cut short. Call once."""
        ...


class JsonPaths:
    """The compiled set of JSON paths that rules read from one side of an exchange."""

    __slots__ = ("_prefilter", "_root", "_selected", "limit")

    def __init__(self, paths: Iterable[str], limit: int) -> None:
        """`limit`: largest decoded value kept (proxy.inspect_body_limit).

        Raises ValueError for an empty path or an empty segment ("a..b").
        """
        self._selected = tuple(_Path.parse(text) for text in dict.fromkeys(paths))
        self._root = _trie(self._selected, 0)
        self._prefilter = _Prefilter(self._selected)
        self.limit = limit

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(path.text for path in self._selected)

    def tap(self, content_type: str | None, content_encoding: str | None) -> BodyTap:
        """A tap for one body with these Content-Type and Content-Encoding headers."""
        decoder = make_decoder(content_encoding)
        if decoder is None:
            return _Settled(self._every(Outcome.ENCODING))
        if _is_event_stream(content_type):
            return _EventStreamTap(self, decoder)
        return _DocumentTap(self, decoder)

    def _every(self, outcome: Outcome) -> dict[str, PathResult]:
        return {path.text: _SETTLED[outcome] for path in self._selected}

    def _walk(self, doc: object) -> dict[str, PathResult]:
        """Results for a document parsed whole."""
        return {path.text: _result(path.walk(doc), Outcome.MISSING) for path in self._selected}


def _result(value: object, absent: Outcome) -> PathResult:
    """FOUND for a value, else the `absent` outcome (JSON null counts as absent)."""
    return _SETTLED[absent] if value is None else PathResult(Outcome.FOUND, cast(JsonValue, value))


def _is_event_stream(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# One decoder for every parse: json.loads with options would build one per call.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_no_constant)


def _loads(data: bytes) -> object:
    """Parse a whole UTF-8 JSON text with exact numbers; ValueError if invalid."""
    return _DECODER.decode(data.decode("utf-8"))


# ------------------------------------------------------------------ paths


@dataclass(frozen=True, slots=True)
class _Path:
    text: str
    keys: tuple[str, ...]
    indexes: tuple[int | None, ...]  # the list index each key also names, if any
    needles: tuple[bytes, ...]  # its object keys (not list indexes) as JSON writes them

    @classmethod
    def parse(cls, text: str) -> _Path:
        keys = tuple(text.split("."))
        if not all(keys):
            raise ValueError(f"JSON path {text!r} has an empty segment")
        indexes = tuple(int(k) if _INDEX.fullmatch(k) else None for k in keys)
        needles = tuple(
            json.dumps(k, ensure_ascii=False).encode()
            for k, i in zip(keys, indexes, strict=True)
            if i is None
        )
        return cls(text, keys, indexes, needles)

    def walk(self, doc: object) -> object:
        """The value at this path in a parsed document; None when there is none."""
        for key, index in zip(self.keys, self.indexes, strict=True):
            if isinstance(doc, dict):
                doc = doc.get(key)
            elif isinstance(doc, list) and index is not None and index < len(doc):
                doc = doc[index]
            else:
                return None
        return doc


_BACKSLASH = 0x5C  # an int: `int in bytes` is a plain memchr, `bytes in bytes` costs more
_BATCH = 8192  # bytes of an event stream gathered before they are looked at
_ENDING = 8  # bytes of a key's JSON form (closing quote included) tested with `in` first


class _Prefilter:
    """A cheap test that spares the JSON parse of events holding no selected path.

    A JSON text with a value at "usage.prompt_tokens" contains the key "prompt_tokens".
    Written without escapes, a key's JSON form is unique (`needles`), so an event in
    which no path's last key appears holds none of them. A key can also be written with
    "\\u" escapes (or "\\/" for "/"): an event that has such escapes is always parsed.
    """

    __slots__ = ("_endings", "_escapes", "_keys")

    def __init__(self, paths: Sequence[_Path]) -> None:
        self._endings: tuple[bytes, ...] = ()
        if not paths or not all(path.needles for path in paths):
            self._keys = None  # a path of list indexes only ("0") may be in any text
            self._escapes: tuple[bytes, ...] = ()
            return
        needles = {path.needles[-1] for path in paths}
        self._keys = re.compile(b"|".join(re.escape(needle) for needle in sorted(needles)))
        # Keys often share their last bytes ("_tokens" in every usage key): a text without
        # any of these endings holds no key, and `in` finds that faster than the pattern.
        self._endings = tuple(sorted({needle[-_ENDING:] for needle in needles}))
        # An ASCII key can only be escaped as \u00XX: sparing "\u4e2d" in CJK text.
        ascii_only = all(needle.isascii() for needle in needles)
        self._escapes = (b"\\u00" if ascii_only else b"\\u",)
        if any(b"/" in needle for needle in needles):
            self._escapes += (b"\\/",)

    def may_hold(self, data: bytes) -> bool:
        """False when `data` surely holds no selected path; also when `data` is a run of
        events: their data is made of its lines, and no key or escape spans two lines."""
        if self._keys is None:
            return True
        if _BACKSLASH in data and any(data.find(escape) >= 0 for escape in self._escapes):
            return True
        # `find`, not `in`: CPython's `bytes in bytes` first tries the needle as an int,
        # raising and clearing a TypeError that costs more than the search itself.
        if any(data.find(ending) >= 0 for ending in self._endings):
            return self._keys.search(data) is not None
        return False

    def first_mark(self, data: bytes) -> int:
        """Where the first byte of `data` lies that may belong to a selected key or to an
        escape that could spell one; -1 when there is none."""
        if self._keys is None:
            return 0 if data else -1
        marks = [data.find(ending) for ending in self._endings]
        if _BACKSLASH in data:
            marks += [data.find(escape) for escape in self._escapes]
        return min((mark for mark in marks if mark >= 0), default=-1)


@dataclass(frozen=True, slots=True)
class _Node:
    """A trie of the selected paths, walked by the streaming parser."""

    children: Mapping[str, _Node]
    path: str | None  # the selected path ending here
    indexed: bool  # some child key is also a list index
    below: tuple[str, ...]  # the selected paths at or under this node


def _trie(paths: Sequence[_Path], depth: int) -> _Node:
    groups: dict[str, list[_Path]] = {}
    end = None
    for path in paths:
        if len(path.keys) == depth:
            end = path.text
        else:
            groups.setdefault(path.keys[depth], []).append(path)
    children = {key: _trie(group, depth + 1) for key, group in groups.items()}
    indexed = any(_INDEX.fullmatch(key) for key in children)
    return _Node(children, end, indexed, tuple(path.text for path in paths))


# ------------------------------------------------------------------ taps


class _Settled:
    """A tap whose results are known before the first byte (unknown encoding)."""

    def __init__(self, results: dict[str, PathResult]) -> None:
        self._results = results

    def feed(self, chunk: bytes) -> None:
        pass

    def finish(self, complete: bool) -> dict[str, PathResult]:
        return self._results


class _DocumentTap:
    """A plain JSON body: kept whole while within the limit, else parsed as it streams."""

    def __init__(self, paths: JsonPaths, decoder: Decoder) -> None:
        self._paths = paths
        self._decoder = decoder
        self._kept: list[bytes] = []
        self._size = 0
        self._stream: _StreamSelect | None = None
        self._failed: Outcome | None = None

    def feed(self, chunk: bytes) -> None:
        if self._failed is not None:
            return
        try:
            for piece in self._decoder.decode(chunk):
                self._take(piece)
        except DecodeError:
            self._failed = Outcome.ENCODING
        except _PARSE_ERRORS:
            self._failed = Outcome.NOT_JSON

    def finish(self, complete: bool) -> dict[str, PathResult]:
        if self._failed is None:
            try:
                return self._finish(complete)
            except DecodeError:
                self._failed = Outcome.ENCODING
            except _PARSE_ERRORS:
                self._failed = Outcome.NOT_JSON
        return self._paths._every(self._failed)

    def _take(self, piece: bytes) -> None:
        if self._stream is not None:
            self._stream.feed(piece)
            return
        self._kept.append(piece)
        self._size += len(piece)
        if self._size > self._paths.limit:
            self._stream = self._replay()

    def _replay(self) -> _StreamSelect:
        """A streaming parser that has seen everything kept so far (which is let go)."""
        stream = _StreamSelect(self._paths)
        for piece in self._kept:
            stream.feed(piece)
        self._kept = []
        return stream

    def _finish(self, complete: bool) -> dict[str, PathResult]:
        if complete:
            for piece in self._decoder.flush():
                self._take(piece)
            if self._stream is None:
                try:
                    return self._paths._walk(_loads(b"".join(self._kept)))
                except RecursionError:
                    pass  # nested deeper than Python's stack: the streaming parser copes
        stream = self._stream or self._replay()
        if complete:
            stream.close()
        return stream.results(complete)


def _after_next_blank(data: bytes, at: int) -> int:
    """Just past the first "\n\n" (a blank line) at or after `at`; len(data) if none."""
    end = data.find(b"\n\n", at)
    return len(data) if end < 0 else end + 2


def _after_last_blank(data: bytes, before: int) -> int:
    """Just past the last "\n\n" that ends at or before `before`; 0 if none."""
    end = data.rfind(b"\n\n", 0, before)
    return 0 if end < 0 else end + 2


class _EventStreamTap:
    """A text/event-stream body: each path's value comes from the last event holding it.

    Chunks are gathered (by reference) and looked at `_BATCH` bytes at a time, because
    a stream is mostly small chunks of events that hold nothing we read, and what costs
    is the work per chunk, not per byte: a handful of byte scans over a batch (`_skim`)
    pass over its runs of such events, and only the events that may hold a selected key
    (or that the scans cannot vouch for) go through the parser. Values are needed only
    at `finish`, which looks at what is still gathered first.
    """

    def __init__(self, paths: JsonPaths, decoder: Decoder) -> None:
        self._paths = paths
        self._decoder = decoder
        self._parser = SseParser(paths.limit)
        self._found: dict[str, object] = {}
        self._oversized = False  # an event was dropped for its size
        self._failed = False  # the Content-Encoding is corrupt
        self._limit = paths.limit
        self._prefilter = paths._prefilter
        self._gathered: list[bytes] = []
        self._batch = min(_BATCH, paths.limit)
        self._room = self._batch  # bytes gathered before a look

    def feed(self, chunk: bytes) -> None:
        self._gathered.append(chunk)
        self._room -= len(chunk)
        if self._room <= 0:
            self._look()

    def _look(self) -> None:
        """Decode and skim what was gathered."""
        gathered = b"".join(self._gathered)
        self._gathered.clear()
        self._room = self._batch
        if self._failed:
            return
        try:
            for piece in self._decoder.decode(gathered):
                self._skim(piece)
        except DecodeError:
            self._failed = True

    def _skim(self, data: bytes) -> None:
        """Feed the parser the events of `data` that may hold a selected value, and pass
        over the runs of whole events that surely hold none.

        A run passed over starts where the parser is between events and ends in a blank
        line ("\n\n"), so feeding it would leave the parser as it is (`between_events`);
        it holds no key (`_Prefilter.first_mark`) and, within the limit, no oversized
        event. The event around each mark goes through the parser.
        """
        parser = self._parser
        if len(data) > self._limit:
            self._take(parser.feed(data))  # only the parser can tell an oversized event
            return
        while data:
            if parser.between_events():
                mark = self._prefilter.first_mark(data)
                if mark < 0:  # whole events, then perhaps the start of one more
                    self._take(parser.feed(data[_after_last_blank(data, len(data)) :]))
                    return
                start, end = _after_last_blank(data, mark), _after_next_blank(data, mark)
            else:  # the rest of a pending event: past its end the parser is between events
                start, end = 0, _after_next_blank(data, 0)
            self._take(parser.feed(data[start:end]))
            data = data[end:]

    def finish(self, complete: bool) -> dict[str, PathResult]:
        self._look()  # what was seen counts, complete or not
        if complete and not self._failed:
            try:
                for piece in self._decoder.flush():
                    self._skim(piece)
                self._take(self._parser.finish())
            except DecodeError:
                self._failed = True
        if self._failed:
            return self._paths._every(Outcome.ENCODING)
        absent = Outcome.MISSING if complete else Outcome.INCOMPLETE
        if self._oversized:
            absent = Outcome.TOO_LARGE
        return {text: _result(self._found.get(text), absent) for text in self._paths.paths}

    def _take(self, events: list[SseEvent]) -> None:
        for event in events:
            if event.oversized:
                # The dropped event may have held newer values of paths already found:
                # billing an older one silently would be wrong, so they become too large
                # unless a later event holds them again.
                self._oversized = True
                self._found.clear()
            elif event.data != b"[DONE]":  # OpenAI's end-of-stream marker
                self._read(event.data)

    def _read(self, data: bytes) -> None:
        if not self._prefilter.may_hold(data):
            return  # the cheap test spares a JSON parse of most events
        try:
            doc = _loads(data)
        except (ValueError, RecursionError):
            return  # an event that is not JSON holds nothing we read
        for path in self._paths._selected:
            value = path.walk(doc)
            if value is not None:
                self._found[path.text] = value


# ------------------------------------------------------------------ streaming parse

_STARTS = frozenset(("start_map", "start_array"))
_ENDS = frozenset(("end_map", "end_array"))


class _TooLarge:
    """Marks a selected value that was larger than the limit."""


_TOO_LARGE = _TooLarge()


class _Frame:
    """An open container on the path to some selected value."""

    __slots__ = ("array", "index", "node")

    def __init__(self, node: _Node, array: bool) -> None:
        self.node = node
        self.array = array
        self.index = -1


class _Capture:
    """Builds one selected container value from parser events, up to the limit."""

    __slots__ = ("builder", "depth", "limit", "path", "size")

    def __init__(self, path: str, start: str, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.builder: Any = ijson.ObjectBuilder()
        self.builder.event(start, None)
        self.depth = 1
        self.size = 1

    def feed(self, event: str, value: object) -> bool:
        """Take one event inside the value; True once the value is complete."""
        if event in _STARTS:
            self.depth += 1
        elif event in _ENDS:
            self.depth -= 1
        if self.builder is not None:
            # about the value's JSON text length; strings count characters
            self.size += len(value) + 3 if isinstance(value, str) else len(str(value)) + 1
            if self.size > self.limit:
                self.builder = None  # too large: stop building, keep counting depth
            else:
                self.builder.event(event, value)
        return self.depth == 0

    def value(self) -> object:
        return _TOO_LARGE if self.builder is None else self.builder.value


class _StreamSelect:
    """An incremental JSON parse that keeps only the values at the selected paths.

    `feed` and `close` raise ijson.JSONError or ValueError on invalid JSON.
    """

    def __init__(self, paths: JsonPaths) -> None:
        self._paths = paths
        self._events = ijson.sendable_list()
        self._coro = ijson.basic_parse_coro(self._events)  # numbers: int or Decimal
        self._stack: list[_Frame] = []
        self._slot: _Node | None = paths._root  # trie node of the next value, if selected
        self._skip = 0  # depth inside a container that holds nothing selected
        self._captures: list[_Capture] = []
        self._values: dict[str, object] = {}  # last one wins, as with json.loads

    def feed(self, data: bytes) -> None:
        if data:  # ijson takes an empty send as the end of the document
            self._coro.send(data)
            self._consume()

    def close(self) -> None:
        """Declare the end of the body; raises if the JSON text is not complete."""
        self._coro.close()
        self._consume()

    def results(self, complete: bool) -> dict[str, PathResult]:
        absent = Outcome.MISSING if complete else Outcome.INCOMPLETE
        for capture in self._captures:  # cut short inside a value known to be too large
            if capture.builder is None:
                self._values[capture.path] = _TOO_LARGE
        return {text: self._result(text, absent) for text in self._paths.paths}

    def _result(self, text: str, absent: Outcome) -> PathResult:
        value = self._values.get(text)
        return _SETTLED[Outcome.TOO_LARGE] if value is _TOO_LARGE else _result(value, absent)

    def _consume(self) -> None:
        for event, value in self._events:
            if self._captures:
                self._capture(event, value)
            if self._skip:
                if event in _STARTS:
                    self._skip += 1
                elif event in _ENDS:
                    self._skip -= 1
            elif event == "map_key":
                self._slot = self._stack[-1].node.children.get(value)
            elif event in _ENDS:
                self._stack.pop()
            else:
                self._value(event, value)
        self._events.clear()

    def _value(self, event: str, value: object) -> None:
        """A value starts: track it if it is selected or on the way to one."""
        node = self._slot
        if self._stack and self._stack[-1].array:
            frame = self._stack[-1]
            frame.index += 1
            node = frame.node.children.get(str(frame.index)) if frame.node.indexed else None
        container = event in _STARTS
        if node is None:
            self._skip = int(container)
            return
        for text in node.below:  # a repeated key replaces all values under it
            self._values.pop(text, None)
        if node.path is not None:
            if container:
                self._captures.append(_Capture(node.path, event, self._paths.limit))
            else:
                self._values[node.path] = self._scalar(value)
        if container and node.children:
            self._stack.append(_Frame(node, event == "start_array"))
        elif container:
            self._skip = 1

    def _scalar(self, value: object) -> object:
        if isinstance(value, str) and len(value) > self._paths.limit:
            return _TOO_LARGE
        return value

    def _capture(self, event: str, value: object) -> None:
        done = [capture for capture in self._captures if capture.feed(event, value)]
        for capture in done:
            self._captures.remove(capture)
            self._values[capture.path] = capture.value()
