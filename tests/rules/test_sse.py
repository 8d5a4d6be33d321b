"""rules/sse.py: the incremental server-sent events parser.

The sample streams here are also fed through the JSON tap in test_jsonselect.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.sse import SseEvent, SseParser

OPENAI_STREAM = (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o",'
    b'"choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}],'
    b'"usage":null}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}\n\n'
    b"data: [DONE]\n\n"
)

ANTHROPIC_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"claude-sonnet-4","content":[],"stop_reason":null,'
    b'"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b"event: ping\n"
    b'data: {"type": "ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hi there"}}\n\n'
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":0}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":15}}\n\n'
    b"event: message_stop\n"
    b'data: {"type":"message_stop"}\n\n'
)

CRLF_STREAM = (
    b': keep-alive\r\n\r\nevent: progress\r\ndata: {"step": 1}\r\n\r\n'
    b'data: {"usage": {"units": 3}}\r\n\r\n'
)
CR_STREAM = b'data: {"step": 1}\r\rdata: {"usage": {"units": 4}}\r\r: bye\r'
MULTILINE_STREAM = (
    b'data: {"usage":\ndata:  {"units": 5},\ndata: "note": "two\\nlines"}\n\n'
    b"data: first line\ndata:\ndata: third\n\n"
)
COMMENTS_STREAM = (
    b": this is a comment\n"
    b":another\n"
    b"id: 7\n"
    b"retry: 1000\n"
    b"unknown: field\n"
    b'data: {"usage": {"units": 6}}\n'
    b": a comment inside an event\n"
    b"\n"
    b": trailing\n\n"
)

SAMPLES = {
    "openai": OPENAI_STREAM,
    "anthropic": ANTHROPIC_STREAM,
    "crlf": CRLF_STREAM,
    "cr": CR_STREAM,
    "multiline": MULTILINE_STREAM,
    "comments": COMMENTS_STREAM,
}


def parse(chunks: list[bytes], limit: int = 10_000) -> list[SseEvent]:
    parser = SseParser(limit)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events + parser.finish()


def pairs(events: list[SseEvent]) -> list[tuple[str, bytes]]:
    return [(e.event, e.data) for e in events]


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: a\n\n", [("message", b"a")]),
        (b"data:a\n\n", [("message", b"a")]),
        (b"data:  a\n\n", [("message", b" a")]),
        (b"data: a\ndata: b\n\n", [("message", b"a\nb")]),
        (b"data: a\r\n\r\n", [("message", b"a")]),
        (b"data: a\r\rdata: b\r\r", [("message", b"a"), ("message", b"b")]),
        (b"data: a\r\ndata: b\rdata: c\n\r\n", [("message", b"a\nb\nc")]),
        (b"data\n\n", [("message", b"")]),
        (b"data:\n\n", [("message", b"")]),
        (b"data: a: b\n\n", [("message", b"a: b")]),
        (b": ping\n\n", []),
        (b"\n\n\n", []),
        (b"event: x\n\n", []),
        (b"event: x\n\ndata: a\n\n", [("message", b"a")]),
        (b"event: usage\ndata: a\n\ndata: b\n\n", [("usage", b"a"), ("message", b"b")]),
        (b"id: 1\nretry: 10\nfoo: bar\nDATA: x\ndata : y\ndata: a\n\n", [("message", b"a")]),
        (b"\xef\xbb\xbfdata: a\n\n", [("message", b"a")]),
        (b"data: [DONE]\n\n", [("message", b"[DONE]")]),
        (b"data: caf\xc3\xa9\n\n", [("message", b"caf\xc3\xa9")]),
    ],
)
def test_parse_table(stream: bytes, expected: list[tuple[str, bytes]]) -> None:
    assert pairs(parse([stream])) == expected


@pytest.mark.parametrize(
    "stream", [b"data: last", b"data: last\n", b"data: last\r", b"event: e\ndata: last\r\n"]
)
def test_finish_dispatches_an_event_without_its_blank_line(stream: bytes) -> None:
    parser = SseParser(1000)
    assert parser.feed(stream) == []
    assert [e.data for e in parser.finish()] == [b"last"]


def test_finish_after_a_clean_end_has_nothing_left() -> None:
    parser = SseParser(1000)
    assert [e.data for e in parser.feed(b"data: x\n\n")] == [b"x"]
    assert parser.finish() == []


def test_events_come_out_as_soon_as_their_blank_line_arrives() -> None:
    parser = SseParser(1000)
    assert parser.feed(b"data: one\n") == []
    assert [e.data for e in parser.feed(b"\ndata: two\n\nda")] == [b"one", b"two"]
    assert [e.data for e in parser.feed(b"ta: three\n\n")] == [b"three"]


def test_a_cr_at_a_chunk_end_and_lf_at_the_next_start_are_one_line_ending() -> None:
    # Two line endings would be a blank line and dispatch "a" before "b" joins it.
    assert pairs(parse([b"data: a\r", b"\ndata: b\n\n"])) == [("message", b"a\nb")]
    assert pairs(parse([b"data: a\r", b"", b"\ndata: b\n\n"])) == [("message", b"a\nb")]
    assert pairs(parse([b"data: a\r", b"\r"])) == [("message", b"a")]


@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_split_point_gives_the_same_events(name: str) -> None:
    stream = SAMPLES[name]
    whole = parse([stream])
    assert whole
    for cut in range(len(stream) + 1):
        assert parse([stream[:cut], stream[cut:]]) == whole, cut


def test_byte_by_byte_gives_the_same_events() -> None:
    for stream in SAMPLES.values():
        assert parse([bytes([b]) for b in stream]) == parse([stream])


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(sorted(SAMPLES)),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_any_multi_way_split_gives_the_same_events(name: str, cuts: list[int]) -> None:
    stream = SAMPLES[name]
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert parse(chunks) == parse([stream])


def test_sample_events() -> None:
    events = parse([ANTHROPIC_STREAM])
    assert [e.event for e in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [e.data for e in parse([MULTILINE_STREAM])] == [
        b'{"usage":\n {"units": 5},\n"note": "two\\nlines"}',
        b"first line\n\nthird",
    ]
    assert [e.data for e in parse([COMMENTS_STREAM])] == [b'{"usage": {"units": 6}}']


def test_data_over_the_limit_is_dropped_and_reported() -> None:
    stream = b"data: " + b"x" * 101 + b"\n\ndata: small\n\n"
    assert parse([stream], limit=100) == [
        SseEvent(b"", "message", oversized=True),
        SseEvent(b"small"),
    ]


def test_data_lines_adding_up_over_the_limit_are_dropped() -> None:
    stream = b"data: " + b"x" * 60 + b"\ndata: " + b"y" * 60 + b"\n\n"
    assert parse([stream], limit=100) == [SseEvent(b"", "message", oversized=True)]
    exactly = b"data: " + b"x" * 50 + b"\ndata: " + b"y" * 49 + b"\n\n"  # 50 + "\n" + 49
    assert parse([exactly], limit=100)[0].data == b"x" * 50 + b"\n" + b"y" * 49


def test_a_long_line_in_small_chunks_is_not_buffered() -> None:
    line = b"data: " + b"z" * 50_000 + b"\n\n"
    events = parse([line[i : i + 7] for i in range(0, len(line), 7)] + [b"data: ok\n\n"], 1000)
    assert events == [SseEvent(b"", "message", oversized=True), SseEvent(b"ok")]


@pytest.mark.parametrize("cut", [1, 3, 20, 71, 109])
def test_an_oversized_first_line_after_a_byte_order_mark_is_reported_at_any_cut(
    cut: int,
) -> None:
    stream = b"\xef\xbb\xbfdata: " + b"x" * 101 + b"\n\ndata: small\n\n"
    assert parse([stream[:cut], stream[cut:]], limit=100) == [
        SseEvent(b"", "message", oversized=True),
        SseEvent(b"small"),
    ]


def test_a_first_line_within_the_limit_after_a_byte_order_mark_is_kept_at_any_cut() -> None:
    stream = b"\xef\xbb\xbfdata: " + b"x" * 100 + b"\n\n"  # the data is exactly the limit
    for cut in range(1, len(stream)):
        assert parse([stream[:cut], stream[cut:]], limit=100) == [SseEvent(b"x" * 100)]


def test_a_long_comment_or_other_field_drops_nothing() -> None:
    stream = b": " + b"c" * 5000 + b"\nevent: " + b"e" * 5000 + b"\ndata: kept\n\n"
    chunks = [stream[i : i + 100] for i in range(0, len(stream), 100)]
    assert parse(chunks, limit=1000) == [SseEvent(b"kept", "message")]


# ------------------------------------------------ the fast paths agree with the general one

# Pieces of SSE text, some of them hostile: any concatenation of them is a stream.
_PIECES = [
    b"data: a",
    b"data:b",
    b'data: {"usage": 1}',
    b"data",
    b"event: e",
    b"event:",
    b": note",
    b"id: 3",
    b"\xef\xbb\xbf",
    b"x" * 40,
    b"\n",
    b"\n\n",
    b"\r",
    b"\r\n",
]


class _LinesOnly(SseParser):
    """The parser with its fast path turned off: the reference for it."""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        return self._feed_lines(chunk)


def _chunks(pieces: list[bytes], cuts: list[int]) -> list[bytes]:
    stream = b"".join(pieces)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


# Streams of the pieces above, cut at any points, under a small and a large event limit.
_CUT_STREAMS = {
    "pieces": st.lists(st.sampled_from(_PIECES), max_size=30),
    "cuts": st.lists(st.integers(min_value=0, max_value=400), max_size=10),
    "limit": st.sampled_from([30, 10_000]),
}


@settings(max_examples=300, deadline=None)
@given(**_CUT_STREAMS)
def test_the_fast_path_gives_what_the_general_path_gives(
    pieces: list[bytes], cuts: list[int], limit: int
) -> None:
    chunks = _chunks(pieces, cuts)
    fast, reference = SseParser(limit), _LinesOnly(limit)
    for chunk in chunks:
        assert fast.feed(chunk) == reference.feed(chunk)
    assert fast.finish() == reference.finish()


@settings(max_examples=300, deadline=None)
@given(**_CUT_STREAMS)
def test_a_blank_line_leaves_the_parser_between_events(
    pieces: list[bytes], cuts: list[int], limit: int
) -> None:
    """What `between_events` promises: text ending in a blank line leaves the parser
    between events, from any state; a run of whole events, each within the limit, fed
    from there comes out whole and leaves it so."""
    parser = SseParser(limit)
    for chunk in _chunks(pieces, cuts):
        parser.feed(chunk)
        if not chunk.endswith(b"\n\n"):
            continue
        assert parser.between_events()
        events = parser.feed(b"event: e\ndata: a\n: note\nid: 3\n\ndata:b\ndata\n\n\n")
        assert events == [SseEvent(b"a", "e"), SseEvent(b"b\n")]
        assert parser.between_events()


def test_between_events_needs_a_first_line_and_nothing_pending() -> None:
    parser = SseParser(100)
    assert not parser.between_events()  # the first line may start with a byte-order mark
    parser.feed(b"data: a\n\n")
    assert parser.between_events()
    parser.feed(b"data: b\n")
    assert not parser.between_events()  # an event is pending
    parser.feed(b"\n")
    assert parser.between_events()
    parser.feed(b"data: c\r")
    parser.feed(b"\r")
    assert not parser.between_events()  # a "\n" may still complete the "\r"
