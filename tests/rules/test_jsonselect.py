"""rules/jsonselect.py: values at JSON paths from streamed plain-JSON and SSE bodies."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any

import brotli
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rules.decode import IDENTITY
from rules.jsonselect import _BATCH, JsonPaths, Outcome, PathResult, _EventStreamTap
from tests.rules.test_sse import (
    ANTHROPIC_STREAM,
    COMMENTS_STREAM,
    CR_STREAM,
    CRLF_STREAM,
    MULTILINE_STREAM,
    OPENAI_STREAM,
)

MB = 1_000_000
STREAMED = 24  # under the bodies' sizes, so they are parsed as they stream; values fit
SSE = "text/event-stream"

MISSING = PathResult(Outcome.MISSING)
INCOMPLETE = PathResult(Outcome.INCOMPLETE)
TOO_LARGE = PathResult(Outcome.TOO_LARGE)
NOT_JSON = PathResult(Outcome.NOT_JSON)
ENCODING = PathResult(Outcome.ENCODING)


def found(value: Any) -> PathResult:
    return PathResult(Outcome.FOUND, value)


def select(
    paths: Iterable[str],
    chunks: Iterable[bytes],
    *,
    limit: int = MB,
    content_type: str | None = "application/json",
    encoding: str | None = None,
    complete: bool = True,
) -> dict[str, PathResult]:
    tap = JsonPaths(paths, limit).tap(content_type, encoding)
    for chunk in chunks:
        tap.feed(chunk)
    return tap.finish(complete)


def split_at(data: bytes, points: Iterable[int]) -> list[bytes]:
    cuts = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


NESTED = json.dumps(
    {
        "id": "req_1",
        "model": "gpt-4o",
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "cost": Decimal("0.0003")},
        "items": [{"id": "a", "tags": ["x", "y"]}, {"id": "b", "n": None}, [1, 2]],
        "text": 'caf\u00e9 "quoted" \\ back\nslash \u2603',
        "flags": {"stream": False, "0": "zero-key"},
        "deep": {"a": {"b": {"c": {"d": [True, None, {"e": -1.5e-3}]}}}},
    },
    default=str,
).encode()
NESTED_PATHS = [
    "id",
    "usage.prompt_tokens",
    "usage",
    "items.0.id",
    "items.1.id",
    "items.1.n",
    "items.2.1",
    "items.0.tags",
    "text",
    "flags.0",
    "flags.stream",
    "deep.a.b.c.d.2.e",
    "deep.a.b.c.d.0",
    "absent",
    "items.9",
]


def nested_expected() -> dict[str, PathResult]:
    return {
        "id": found("req_1"),
        "usage.prompt_tokens": found(9),
        "usage": found({"prompt_tokens": 9, "completion_tokens": 12, "cost": "0.0003"}),
        "items.0.id": found("a"),
        "items.1.id": found("b"),
        "items.1.n": MISSING,
        "items.2.1": found(2),
        "items.0.tags": found(["x", "y"]),
        "text": found('caf\u00e9 "quoted" \\ back\nslash \u2603'),
        "flags.0": found("zero-key"),
        "flags.stream": found(False),
        "deep.a.b.c.d.2.e": found(Decimal("-0.0015")),
        "deep.a.b.c.d.0": found(True),
        "absent": MISSING,
        "items.9": MISSING,
    }


# ------------------------------------------------------------ plain JSON


def test_nested_body() -> None:
    assert select(NESTED_PATHS, [NESTED]) == nested_expected()


def test_nested_body_streamed_under_a_small_limit() -> None:
    expected = nested_expected()
    expected["usage"] = TOO_LARGE  # about 70 characters of JSON
    expected["text"] = TOO_LARGE  # 29 characters
    assert select(NESTED_PATHS, [NESTED], limit=25) == expected


@pytest.mark.parametrize("limit", [MB, 64])
def test_nested_body_at_every_split_point(limit: int) -> None:
    whole = select(NESTED_PATHS, [NESTED], limit=limit)
    for cut in range(len(NESTED) + 1):
        assert select(NESTED_PATHS, [NESTED[:cut], NESTED[cut:]], limit=limit) == whole, cut


def test_gzip_body_at_every_split_point() -> None:
    blob = gzip.compress(NESTED)
    whole = select(NESTED_PATHS, [NESTED])
    for cut in range(len(blob) + 1):
        assert select(NESTED_PATHS, [blob[:cut], blob[cut:]], encoding="gzip") == whole, cut


@settings(max_examples=150, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=15),
    limit=st.sampled_from([MB, 200, 40]),
)
def test_any_multi_way_split_of_the_nested_body(cuts: list[int], limit: int) -> None:
    chunks = split_at(NESTED, cuts)
    assert select(NESTED_PATHS, chunks, limit=limit) == select(NESTED_PATHS, [NESTED], limit=limit)


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODED = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "deflate ": raw_deflate,  # the same header value, raw deflate inside
    "br": brotli.compress,
    "gzip, br": lambda data: brotli.compress(gzip.compress(data)),
}


@pytest.mark.parametrize("encoding", list(ENCODED))
@pytest.mark.parametrize("limit", [MB, 64])
def test_encoded_bodies(encoding: str, limit: int) -> None:
    blob = ENCODED[encoding](NESTED)
    results = select(NESTED_PATHS, pieces(blob, 50), encoding=encoding, limit=limit)
    assert results == select(NESTED_PATHS, [NESTED], limit=limit)
    assert results["usage.prompt_tokens"] == found(9)


@pytest.mark.parametrize("encoding", ["zstd", "compress", "gzip, zstd"])
def test_unknown_encoding(encoding: str) -> None:
    assert select(["a"], [b'{"a": 1}'], encoding=encoding) == {"a": ENCODING}
    assert select(["a"], [b"data: {}\n\n"], encoding=encoding, content_type=SSE) == {"a": ENCODING}


@pytest.mark.parametrize(
    ("blob", "complete"),
    [
        (b'{"a": 1}', True),  # not gzip at all
        (gzip.compress(b'{"a": 1}') + b"junk", True),
        (gzip.compress(b'{"a": 1}')[:-3], True),  # the gzip trailer is missing
    ],
)
def test_corrupt_encoding(blob: bytes, complete: bool) -> None:
    assert select(["a"], [blob], encoding="gzip", complete=complete) == {"a": ENCODING}
    sse = select(["a"], [blob], encoding="gzip", content_type=SSE, complete=complete)
    assert sse == {"a": ENCODING}


def test_a_cut_short_gzip_body_keeps_what_was_decoded() -> None:
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    head = compressor.compress(b'{"a": 1, ') + compressor.flush(zlib.Z_SYNC_FLUSH)
    tail = compressor.compress(b'"c": 3}') + compressor.flush()
    assert select(["a", "c"], [head + tail], encoding="gzip") == {"a": found(1), "c": found(3)}
    assert select(["a", "c"], [head], encoding="gzip", complete=False) == {
        "a": found(1),
        "c": INCOMPLETE,
    }


@pytest.mark.parametrize("limit", [MB, STREAMED])
def test_numbers_are_exact(limit: int) -> None:
    body = b'{"a": 0.1, "b": 12345678901234567890, "c": 1e3, "d": -0, "e": 1.0, "f": true, "g": 2}'
    results = select(list("abcdefg"), [body], limit=limit)
    values = {k: r.value for k, r in results.items()}
    assert values == {
        "a": Decimal("0.1"),
        "b": 12345678901234567890,
        "c": Decimal("1E+3"),
        "d": 0,
        "e": Decimal("1.0"),
        "f": True,
        "g": 2,
    }
    kinds = {k: type(v) for k, v in values.items()}
    assert kinds == dict(a=Decimal, b=int, c=Decimal, d=int, e=Decimal, f=bool, g=int)


@pytest.mark.parametrize("limit", [MB, STREAMED])
def test_null_counts_as_missing(limit: int) -> None:
    body = b'{"a": null, "b": {"c": null}, "d": [null]}'
    results = select(["a", "b.c", "d.0", "b"], [body], limit=limit)
    assert results == {"a": MISSING, "b.c": MISSING, "d.0": MISSING, "b": found({"c": None})}


@pytest.mark.parametrize("limit", [MB, 1])
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b'{"a": 1} x',
        b'{"a": 1}{"a": 2}',
        b'{"a": 1',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"[1,]",
        b"{'a': 1}",
        b'{"a": "\xff"}',
        b"<html>not json</html>",
    ],
)
def test_invalid_json(body: bytes, limit: int) -> None:
    assert select(["a"], [body], limit=limit) == {"a": NOT_JSON}


def test_invalid_json_stops_the_work_and_later_chunks_are_ignored() -> None:
    tap = JsonPaths(["a"], 10).tap(None, None)
    tap.feed(b'{"a": 1, "pad": "0123456789", ]')  # over the limit: parsed now, and invalid
    tap.feed(b"anything at all")
    assert tap.finish(True) == {"a": NOT_JSON}


@pytest.mark.parametrize("limit", [MB, STREAMED])
def test_array_indexing(limit: int) -> None:
    body = b'{"items": [{"id": "x"}, {"id": "y"}], "m": {"0": "key", "01": "k2"}, "s": "abc"}'
    paths = ["items.0.id", "items.1.id", "items.2.id", "m.0", "m.01", "items.01.id", "s.0"]
    assert select(paths, [body], limit=limit) == {
        "items.0.id": found("x"),
        "items.1.id": found("y"),
        "items.2.id": MISSING,
        "m.0": found("key"),  # a digit segment is an ordinary key in an object
        "m.01": found("k2"),
        "items.01.id": MISSING,  # "01" is not an index
        "s.0": MISSING,
    }


def test_top_level_array() -> None:
    body = b'[{"id": 1}, [true, {"id": 2}]]'
    for limit in (MB, 1):
        assert select(["0.id", "1.1.id"], [body], limit=limit) == {
            "0.id": found(1),
            "1.1.id": found(2),
        }


@pytest.mark.parametrize("limit", [MB, STREAMED])
def test_duplicate_keys_last_wins(limit: int) -> None:
    body = b'{"a": 1, "a": 2, "b": 1, "b": null, "c": {"x": 1}, "c": 5, "d": [1], "d": {"0": 7}}'
    assert select(["a", "b", "c.x", "d.0"], [body], limit=limit) == {
        "a": found(2),
        "b": MISSING,
        "c.x": MISSING,
        "d.0": found(7),
    }


def test_the_limit_is_inclusive() -> None:
    body = b'{"a": "' + b"x" * 20 + b'"}'
    assert select(["a"], [body], limit=len(body))["a"] == found("x" * 20)
    assert select(["a"], [body], limit=20)["a"] == found("x" * 20)  # streamed, value fits
    assert select(["a"], [body], limit=19)["a"] == TOO_LARGE


@pytest.mark.parametrize("limit", [MB, STREAMED])
def test_a_cut_short_body_keeps_what_was_seen(limit: int) -> None:
    body = b'{"a": 1, "b": {"c": [10, 20'
    results = select(["a", "b.c.0", "b.c.1", "b", "z"], [body], limit=limit, complete=False)
    assert results == {
        "a": found(1),
        "b.c.0": found(10),
        "b.c.1": INCOMPLETE,  # "20" might have gone on: "205"
        "b": INCOMPLETE,
        "z": INCOMPLETE,
    }


def test_a_cut_short_invalid_body_is_not_json() -> None:
    assert select(["a"], [b'{"a": 1, ]'], complete=False) == {"a": NOT_JSON}


def test_a_cut_short_empty_body_is_incomplete() -> None:
    assert select(["a"], [], complete=False) == {"a": INCOMPLETE}


def test_deeply_nested_bodies_do_not_need_pythons_stack() -> None:
    depth = 100_000  # json.loads gives up (RecursionError); the streaming parser does not
    body = b'{"a": ' + b"[" * depth + b"]" * depth + b', "b": 2}'
    assert select(["b", "a.0.0.7"], [body]) == {"b": found(2), "a.0.0.7": MISSING}


def big_body(size: int, tail: bytes) -> bytes:
    record = b'{"i": 123456, "s": "' + b"x" * 40 + b'", "f": [1.5, true, null]}'
    count = size // (len(record) + 1)
    return b'{"filler": [' + b",".join([record] * count) + b"], " + tail + b"}"


def test_a_5mb_body_yields_its_last_value_in_bounded_memory() -> None:
    body = big_body(5 * MB, b'"usage": {"total_tokens": 42}')
    assert len(body) > 5 * MB
    tap = JsonPaths(["usage.total_tokens", "filler.2.i"], MB).tap("application/json", None)
    tracemalloc.start()
    try:
        for chunk in pieces(body, 64 * 1024):
            tap.feed(chunk)
        results = tap.finish(True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert results == {"usage.total_tokens": found(42), "filler.2.i": found(123456)}
    # the kept first MB plus one chunk's parse events; nowhere near the 5 MB body
    assert peak < 2.5 * MB, peak


def test_a_selected_value_over_the_limit_is_too_large() -> None:
    body = b'{"big": "' + b"y" * (2 * MB) + b'", "obj": {"list": [' + b"1," * MB + b'2], "k": 1}'
    body += b', "small": {"ok": [1, "two"]}}'
    results = select(["big", "obj", "obj.k", "small"], pieces(body, 65536), limit=MB)
    assert results == {
        "big": TOO_LARGE,
        "obj": TOO_LARGE,
        "obj.k": found(1),
        "small": found({"ok": [1, "two"]}),
    }


def test_a_too_large_value_cut_short_is_still_too_large() -> None:
    body = b'{"obj": [' + b'"abcdefgh",' * 200
    assert select(["obj"], [body], limit=1000, complete=False) == {"obj": TOO_LARGE}


def test_bad_paths_are_refused() -> None:
    for bad in ["", "a..b", ".a", "a."]:
        with pytest.raises(ValueError, match="empty segment"):
            JsonPaths([bad], MB)


def test_paths_are_deduplicated_in_order() -> None:
    assert JsonPaths(["b", "a", "b"], MB).paths == ("b", "a")


# --------------------------------------------- agreement of the two parsers

_keys = st.sampled_from(["a", "b", "0", "1", "usage", "k\u00e9y"])
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.decimals(allow_nan=False, allow_infinity=False, places=4)
    | st.text(max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=20,
)


def to_json(value: Any) -> str:
    """json.dumps, with Decimals written as exact JSON numbers."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


def all_paths(value: Any, prefix: str = "") -> Iterator[str]:
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        path = f"{prefix}{key}"
        yield path
        if isinstance(child, dict | list):
            yield from all_paths(child, path + ".")


@settings(max_examples=300, deadline=None)
@given(
    doc=st.dictionaries(_keys, _json, max_size=5) | st.lists(_json, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=6),
)
def test_streaming_agrees_with_whole_parsing(doc: Any, cuts: list[int]) -> None:
    body = to_json(doc).encode()
    paths = [*all_paths(doc), "nope", "a.nope", "0.0.0"]
    whole = select(paths, [body])
    streamed = select(paths, split_at(body, cuts), limit=15)
    for path in dict.fromkeys(paths):
        if streamed[path] != TOO_LARGE:
            assert repr(streamed[path]) == repr(whole[path]), path
    assert all(r.outcome in (Outcome.FOUND, Outcome.MISSING) for r in whole.values())


# ------------------------------------------------------------ event streams

SSE_SAMPLES: dict[str, tuple[bytes, dict[str, PathResult]]] = {
    "openai": (
        OPENAI_STREAM,
        {
            "usage.prompt_tokens": found(9),
            "usage.completion_tokens": found(12),
            "model": found("gpt-4o"),
            "choices.0.delta.content": found("Hello"),
            "choices.0.finish_reason": found("stop"),
        },
    ),
    "anthropic": (
        ANTHROPIC_STREAM,
        {
            "message.usage.input_tokens": found(25),
            "usage.output_tokens": found(15),
            "message.model": found("claude-sonnet-4"),
            "delta.text": found("Hi there"),
            "type": found("message_stop"),
            "usage.input_tokens": MISSING,
        },
    ),
    "crlf": (CRLF_STREAM, {"usage.units": found(3), "step": found(1)}),
    "cr": (CR_STREAM, {"usage.units": found(4), "step": found(1)}),
    "multiline": (MULTILINE_STREAM, {"usage.units": found(5), "note": found("two\nlines")}),
    "comments": (COMMENTS_STREAM, {"usage.units": found(6), "usage": found({"units": 6})}),
}


@pytest.mark.parametrize("name", list(SSE_SAMPLES))
def test_event_stream_samples_at_every_split_point(name: str) -> None:
    stream, expected = SSE_SAMPLES[name]
    assert select(expected, [stream], content_type=SSE) == expected
    for cut in range(len(stream) + 1):
        got = select(expected, [stream[:cut], stream[cut:]], content_type=SSE)
        assert got == expected, cut


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(sorted(SSE_SAMPLES)),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
    encoding=st.sampled_from([None, "gzip", "br"]),
)
def test_event_streams_split_any_way(name: str, cuts: list[int], encoding: str | None) -> None:
    stream, expected = SSE_SAMPLES[name]
    blob = ENCODED[encoding](stream) if encoding else stream
    got = select(expected, split_at(blob, cuts), content_type=SSE, encoding=encoding)
    assert got == expected


@pytest.mark.parametrize(
    "content_type",
    ["text/event-stream", "text/event-stream; charset=utf-8", "Text/Event-Stream ;x=y"],
)
def test_event_stream_content_type_parameters_are_ignored(content_type: str) -> None:
    results = select(["usage.units"], [CRLF_STREAM], content_type=content_type)
    assert results == {"usage.units": found(3)}


def test_an_event_stream_is_not_json_when_served_as_json() -> None:
    assert select(["usage.units"], [CRLF_STREAM]) == {"usage.units": NOT_JSON}


@pytest.mark.parametrize("encoding", ["deflate", "x-gzip", "gzip, br"])
def test_encoded_event_streams(encoding: str) -> None:
    stream, expected = SSE_SAMPLES["anthropic"]
    blob = ENCODED[encoding](stream)
    assert select(expected, pieces(blob, 7), content_type=SSE, encoding=encoding) == expected


def test_a_cut_short_event_stream_keeps_what_was_seen() -> None:
    stream, _ = SSE_SAMPLES["anthropic"]
    cut = stream.index(b"event: message_delta")
    paths = ["message.usage.input_tokens", "usage.output_tokens"]
    assert select(paths, [stream[:cut]], content_type=SSE, complete=False) == {
        "message.usage.input_tokens": found(25),
        "usage.output_tokens": INCOMPLETE,
    }


def test_the_last_event_without_a_blank_line_counts_only_when_complete() -> None:
    stream = b'data: {"usage": {"n": 1}}\n\ndata: {"usage": {"n": 2}}'
    assert select(["usage.n"], [stream], content_type=SSE) == {"usage.n": found(2)}
    cut_short = select(["usage.n"], [stream], content_type=SSE, complete=False)
    assert cut_short == {"usage.n": found(1)}
    assert select(["x"], [b"data: {}"], content_type=SSE, complete=False) == {"x": INCOMPLETE}


def test_events_without_the_path_or_with_null_do_not_override() -> None:
    stream = (
        b'data: {"usage": {"n": 1}}\n\n'
        b'data: {"usage": null, "text": "usage"}\n\n'
        b'data: {"other": {"usage": 5}}\n\n'
        b'data: not json with "usage"\n\n'
        b"data: [DONE]\n\n"
    )
    assert select(["usage.n", "usage"], [stream], content_type=SSE) == {
        "usage.n": found(1),
        "usage": found({"n": 1}),
    }


def test_an_empty_or_eventless_stream_is_missing() -> None:
    for stream in (b"", b": only a comment\n\n", b"data: [DONE]\n\n"):
        assert select(["usage"], [stream], content_type=SSE) == {"usage": MISSING}


def test_an_oversized_event_makes_unfound_paths_too_large() -> None:
    big = b'data: {"usage": {"n": 9}, "pad": "' + b"p" * 500 + b'"}\n\n'
    small = b'data: {"usage": {"n": 1}}\n\n'
    paths = ["usage.n", "other"]
    assert select(paths, [big], content_type=SSE, limit=200) == {
        "usage.n": TOO_LARGE,
        "other": TOO_LARGE,
    }
    # the dropped event may hold a newer usage.n: the older value is not taken silently
    assert select(paths, [small, big], content_type=SSE, limit=200) == {
        "usage.n": TOO_LARGE,
        "other": TOO_LARGE,
    }
    assert select(paths, [big, small], content_type=SSE, limit=200, complete=False) == {
        "usage.n": found(1),
        "other": TOO_LARGE,
    }


def test_an_event_holding_a_top_level_array_is_read() -> None:
    stream = b'data: [1, {"id": 7}]\n\n'
    assert select(["1.id", "0"], [stream], content_type=SSE) == {"1.id": found(7), "0": found(1)}


def test_a_long_event_stream_in_bounded_memory() -> None:
    event = b'data: {"choices": [{"delta": {"content": "' + b"t" * 200 + b'"}}], "usage": null}\n\n'
    final = b'data: {"choices": [], "usage": {"completion_tokens": 20000}}\n\ndata: [DONE]\n\n'
    tap = JsonPaths(["usage.completion_tokens"], MB).tap(SSE, None)
    tracemalloc.start()
    try:
        for _ in range(20_000):  # about 5 MB
            tap.feed(event)
        tap.feed(final)
        results = tap.finish(True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert results == {"usage.completion_tokens": found(20000)}
    assert peak < 200_000, peak


# ------------------------------------------------ the event pre-filter never hides a value


@pytest.mark.parametrize(
    ("path", "event", "value"),
    [
        ("usage.n", b'{"\\u0075sage": {"\\u006e": 3}}', 3),  # keys written with escapes
        ("usage.n", b'{"usage": {"\\u006E": 4}}', 4),
        ("a/b", b'{"a\\/b": 5}', 5),
        ("caf\u00e9.n", b'{"caf\\u00e9": {"n": 6}}', 6),
        ("\u4e2d.n", b'{"\\u4e2d": {"n": 7}}', 7),
        ('q"k', b'{"q\\u0022k": 8}', 8),
    ],
)
def test_an_event_writing_keys_with_escapes_is_read(path: str, event: bytes, value: int) -> None:
    line = b"data: " + event + b"\n\n"
    later = b'data: {"text": "caf\\u00e9 \\u4e2d"}\n\n'  # escapes in text: parsed, no harm
    for chunks in ([line, later], [b": hi\n\n", line]):
        assert select([path], chunks, content_type=SSE) == {path: found(value)}


_KEYS = ["usage", "n", "a/b", "caf\u00e9", "\u4e2d", "text", "0"]
_DOCS = st.recursive(
    st.none() | st.integers(-5, 5) | st.sampled_from(_KEYS),
    lambda inner: (
        st.dictionaries(st.sampled_from(_KEYS), inner, max_size=3) | st.lists(inner, max_size=2)
    ),
    max_leaves=8,
)
_SELECTED = ["usage.n", "usage", "a/b.n", "caf\u00e9", "\u4e2d.0", "0.n", "text"]


def _walk(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if isinstance(doc, dict):
            doc = doc.get(key)
        elif isinstance(doc, list) and key.isdigit() and int(key) < len(doc):
            doc = doc[int(key)]
        else:
            return None
    return doc


@settings(max_examples=300, deadline=None)
@given(
    docs=st.lists(st.tuples(_DOCS, st.booleans(), st.booleans()), max_size=6),
    paths=st.lists(st.sampled_from(_SELECTED), min_size=1, max_size=3),
)
def test_the_event_stream_tap_finds_what_parsing_every_event_finds(
    docs: list[tuple[Any, bool, bool]], paths: list[str]
) -> None:
    """Each event written plainly or with every non-ASCII character (and "/") escaped."""
    events = []
    for doc, ascii_only, slashes in docs:
        text = json.dumps(doc, ensure_ascii=ascii_only)
        events.append(b"data: " + (text.replace("/", "\\/") if slashes else text).encode())
    stream = b"\n\n".join(events) + b"\n\n"
    expected = {}
    for path in dict.fromkeys(paths):
        values = [v for v in (_walk(doc, path) for doc, _, _ in docs) if v is not None]
        expected[path] = found(values[-1]) if values else MISSING
    assert select(paths, [stream], content_type=SSE) == expected
    assert select(paths, [e + b"\n\n" for e in events], content_type=SSE) == expected


@pytest.mark.parametrize(
    ("data", "may_hold"),
    [
        (b'{"delta":{"text":"hi"}}', False),  # no key's ending: no pattern search at all
        (b'{"other_tokens":1}', False),  # an ending, but no selected key
        (b'{"usage":{"output_tokens":1}}', True),
        (b'{"model":"m","id":"x"}', True),  # a key with another ending
        (b'{"\\u006fdel":"m"}', True),  # an escaped key is never ruled out
    ],
)
def test_the_prefilter_rules_out_only_texts_without_any_key(data: bytes, may_hold: bool) -> None:
    prefilter = JsonPaths(["usage.output_tokens", "message.model"], 1_000)._prefilter
    assert prefilter.may_hold(data) is may_hold


# ------------------------------------------------ skimming an event stream loses nothing


class _EveryEvent(_EventStreamTap):
    """The event-stream tap without skimming: every byte goes through the parser."""

    def _skim(self, data: bytes) -> None:
        self._take(self._parser.feed(data))


_STREAM_PIECES = [
    b'data: {"usage": {"n": 1}}\n\n',
    b'data: {"usage": {"n": 2}, "pad": "' + b"p" * 60 + b'"}\n\n',  # oversized at limit 64
    b'data: {"pad": "' + b"q" * 60 + b'"}\n\n',  # oversized, without a key
    b'data: {"\\u0075sage": {"n": 3}}\n\n',  # a key written with escapes
    b'data: {"text": "a\\nb \\u00e9"}\n\n',  # escapes in text
    b'event: x\ndata: {"text": "hi"}\n\n',
    b'data: {"usage"\ndata: : {"n": 4}}\n\n',  # a key's value on the next data line
    b'data: {"usage": {"n": 5}}\r\n\r\n',
    b'data: {"usage": {"n": 6}}\r\r',
    b": comment\n\n",
    b"data: [DONE]\n\n",
    b"\xef\xbb\xbf",
    b"data: partial",
    b"\n",
    b"\r",
    b"x" * 70,
]


@settings(max_examples=500, deadline=None)
# Found by this test: a byte-order mark, then an oversized event cut inside its data line.
@example(pieces=[_STREAM_PIECES[11], _STREAM_PIECES[1]], cuts=[71], limit=64, batch=100,
         complete=False)
@given(
    pieces=st.lists(st.sampled_from(_STREAM_PIECES), max_size=25),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
    limit=st.sampled_from([64, 10_000]),
    batch=st.sampled_from([1, 16, 100, 8192]),
    complete=st.booleans(),
)
def test_skimming_an_event_stream_finds_what_parsing_every_event_finds(
    pieces: list[bytes], cuts: list[int], limit: int, batch: int, complete: bool
) -> None:
    """Runs of events passed over by the byte scans, at any chunk and batch boundaries,
    never change a result: values, cut-short and oversized outcomes alike."""
    stream = b"".join(pieces)
    paths = JsonPaths(["usage.n", "text"], limit)
    skimming, reference = _EventStreamTap(paths, IDENTITY), _EveryEvent(paths, IDENTITY)
    skimming._batch = skimming._room = batch
    for chunk in split_at(stream, cuts):
        skimming.feed(chunk)
        reference.feed(chunk)
    assert skimming.finish(complete) == reference.finish(complete)


def test_an_event_stream_is_gathered_in_bounded_batches() -> None:
    """Small chunks wait, by reference, until a batch is full or the body ends."""
    tap = JsonPaths(["usage.n"], MB).tap(SSE, None)
    event = b'data: {"usage": {"n": 1}}\n\n'
    assert isinstance(tap, _EventStreamTap)
    tap.feed(event)
    assert tap._gathered == [event]
    for _ in range(_BATCH // len(event) + 1):
        tap.feed(event)
    assert 0 < sum(map(len, tap._gathered)) < _BATCH
    assert tap.finish(True) == {"usage.n": found(1)}
