"""The example rule sets read the right usage from every provider stream, however it arrives.

No network here: each provider's stream is fed to the example's own response tap in
arbitrary chunks, with LF or CRLF line ends, JSON spread over several `data:` lines and
comments between events; the events the example's rules build are then read by its meters.
The totals must equal the reported usage, with cached tokens counted once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from billing.meters import Skip
from proxy.config import Config, load_config
from rules.exchange import Exchange
from tests.ai import wire
from tests.ai.conftest import EXAMPLES
from tests.ai.wire import Tokens

EVENT_STREAM = "text/event-stream"
TOKENS = Tokens(input=1500, output=320, cached=1024, cache_write=256, thinking=64, tool_use=12)
PIECES = ["Hel", "lo", ", wor", "ld"]


@dataclass(frozen=True)
class Stream:
    example: str
    path: str
    request: dict[str, object]
    frames: list[bytes]
    expected: dict[str, int]  # meter -> quantity


STREAMS = {
    "openai-chat": Stream(
        "openai",
        "/v1/chat/completions",
        {"model": "gpt-4o", "stream": True},
        wire.openai_chat_frames("gpt-4o", TOKENS, PIECES),
        {
            "openai_uncached_input_tokens": 1500 - 1024,
            "openai_cached_input_tokens": 1024,
            "openai_output_tokens": 320,
        },
    ),
    "openai-responses": Stream(
        "openai",
        "/v1/responses",
        {"model": "gpt-4o", "stream": True},
        wire.openai_response_frames("gpt-4o", TOKENS, PIECES),
        {
            "openai_uncached_input_tokens": 1500 - 1024,
            "openai_cached_input_tokens": 1024,
            "openai_output_tokens": 320,
        },
    ),
    "anthropic": Stream(
        "anthropic",
        "/v1/messages",
        {"model": "claude-sonnet-4-6", "stream": True},
        wire.anthropic_frames("claude-sonnet-4-6", TOKENS, PIECES, repeat_input=True),
        {
            "anthropic_input_tokens": 1500,  # Anthropic's input_tokens exclude cache reads
            "anthropic_cache_read_input_tokens": 1024,
            "anthropic_cache_write_input_tokens": 256,
            "anthropic_output_tokens": 320,
        },
    ),
    "gemini": Stream(
        "gemini",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        {"contents": []},
        wire.gemini_frames("gemini-2.5-flash", TOKENS, PIECES, newline=b"\n"),
        {
            "gemini_uncached_input_tokens": 1500 - 1024,
            "gemini_cached_input_tokens": 1024,
            "gemini_output_tokens": 320,
            "gemini_thinking_tokens": 64,
            "gemini_tool_use_prompt_tokens": 12,
        },
    ),
}


def crlf(frames: list[bytes]) -> list[bytes]:
    return [frame.replace(b"\n", b"\r\n") for frame in frames]


def multiline(frames: list[bytes]) -> list[bytes]:
    """Spread each JSON payload over several `data:` lines (joined with newlines, whitespace
    to JSON), and put comments between the events."""
    spread = [re.sub(rb'(?<=, )(?=")', b"\ndata: ", frame) for frame in frames]
    return [b": keep-alive\n\n" + frame + b":\n" for frame in spread]


FORMATS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "lf": list,
    "crlf": crlf,
    "multiline": multiline,
}


@cache
def example(name: str) -> Config:
    return load_config(EXAMPLES / f"{name}.yaml", environ={})


def totals(stream: Stream, chunks: list[bytes]) -> dict[str, Decimal]:
    """Run the stream through the example's taps and rules; read the events with its meters."""
    config = example(stream.example)
    rules = config.rules
    x = Exchange("POST", stream.path, stream.path, "", _headers({}), 0, customer_id="acme")
    x.candidates = rules.candidates("POST", stream.path)
    if rules.request_json is not None:  # Gemini's rules read nothing from the request
        request_tap = rules.request_json.tap("application/json", None)
        request_tap.feed(json.dumps(stream.request).encode())
        x.request_json = request_tap.finish(complete=True)
    assert rules.response_json is not None
    x.status = 200
    x.response_headers = _headers({"Content-Type": EVENT_STREAM})
    tap = rules.response_json.tap(EVENT_STREAM, None)
    for chunk in chunks:
        tap.feed(chunk)
    x.response_json = tap.finish(complete=True)
    errors: list[tuple[str, str, str]] = []
    events = rules.events(x, lambda *error: errors.append(error))
    assert errors == []  # every value the rules read was found (or defaulted)
    out = {}
    for meter in config.meters:
        values = [meter.read(e.metadata) for e in events if e.event_name == meter.event_name]
        assert not any(isinstance(v, Skip) for v in values), meter.name
        out[meter.name] = sum((v for v in values if isinstance(v, Decimal)), Decimal(0))
    return out


def split(blob: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(blob)) for c in cuts})
    return [blob[a:b] for a, b in zip([0, *points], [*points, len(blob)], strict=True)]


def _headers(values: dict[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(values))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_split_point(name: str, fmt: str) -> None:
    stream = STREAMS[name]
    blob = b"".join(FORMATS[fmt](stream.frames))
    expected = {meter: Decimal(q) for meter, q in stream.expected.items()}
    assert totals(stream, [blob]) == expected
    for cut in range(len(blob) + 1):
        assert totals(stream, [blob[:cut], blob[cut:]]) == expected, cut


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(sorted(STREAMS)),
    fmt=st.sampled_from(sorted(FORMATS)),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=40),
)
def test_any_split_into_many_chunks(name: str, fmt: str, cuts: list[int]) -> None:
    stream = STREAMS[name]
    chunks = split(b"".join(FORMATS[fmt](stream.frames)), cuts)
    assert totals(stream, chunks) == {m: Decimal(q) for m, q in stream.expected.items()}


def test_the_multiline_format_really_spreads_payloads() -> None:
    frame = multiline(STREAMS["openai-chat"].frames)[-2]  # the usage chunk
    assert frame.count(b"\ndata: ") > 3 and frame.startswith(b": keep-alive\n\n")
