"""The example rule sets read the right usage from every provider body, however it arrives.

No network here: each provider's JSON body or event stream is fed to the example's own
response tap (streams in arbitrary chunks, with LF or CRLF line ends, JSON spread over several
`data:` lines and comments between events); the events the example's rules build are then read
by its meters. The totals must equal the reported usage, cached tokens counted once, from the
number of events per exchange that examples/ai/README.md states.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from billing.events import UsageEvent
from billing.meters import Skip
from proxy.config import Config, load_config
from rules.exchange import Exchange
from rules.ruleset import RuleSet
from tests.ai import wire
from tests.ai.conftest import EXAMPLES
from tests.ai.wire import AnthropicDelta, Tokens

EVENT_STREAM = "text/event-stream"
JSON = "application/json"
TOKENS = Tokens(input=1500, output=320, cached=1024, cache_write=256, thinking=64, tool_use=12)
PIECES = ["Hel", "lo", ", wor", "ld"]
GPT, CLAUDE, GEMINI = "gpt-4o", "claude-sonnet-4-6", "gemini-2.5-flash"
GEMINI_PATH = f"/v1beta/models/{GEMINI}"
EVENTS_PER_EXCHANGE = {"openai": 2, "anthropic": 1, "gemini": 2}  # usage (+ cache credit)


@dataclass(frozen=True)
class Call:
    """One exchange of an example: what the client asked and what the upstream answered."""

    example: str
    path: str
    request: dict[str, object]
    content_type: str
    frames: list[bytes]  # a JSON body is one frame


Build = Callable[[Tokens, int], Call]  # (final usage, input a server tool adds) -> Call


def _json(example: str, path: str, request: dict[str, object], body: object) -> Call:
    return Call(example, path, request, JSON, [json.dumps(body).encode()])


def _anthropic_stream(delta: AnthropicDelta) -> Build:
    def build(tokens: Tokens, tool_input: int) -> Call:
        frames = wire.anthropic_frames(CLAUDE, tokens, PIECES, delta, tool_input)
        request: dict[str, object] = {"model": CLAUDE, "stream": True}
        return Call("anthropic", "/v1/messages", request, EVENT_STREAM, frames)

    return build


# Every endpoint and shape; Anthropic streams in each message_delta variant. Only the
# "server-tool" stream uses the tool input; the others ignore it.
CALLS: dict[str, Build] = {
    "openai-chat-json": lambda t, _: _json(
        "openai", "/v1/chat/completions", {"model": GPT}, wire.openai_chat_body(GPT, t, "Hi")
    ),
    "openai-chat-sse": lambda t, _: Call(
        "openai",
        "/v1/chat/completions",
        {"model": GPT, "stream": True, "stream_options": {"include_usage": True}},
        EVENT_STREAM,
        wire.openai_chat_frames(GPT, t, PIECES),
    ),
    "openai-responses-json": lambda t, _: _json(
        "openai", "/v1/responses", {"model": GPT}, wire.openai_response_body(GPT, t, "Hi")
    ),
    "openai-responses-sse": lambda t, _: Call(
        "openai",
        "/v1/responses",
        {"model": GPT, "stream": True},
        EVENT_STREAM,
        wire.openai_response_frames(GPT, t, PIECES),
    ),
    "anthropic-json": lambda t, _: _json(
        "anthropic",
        "/v1/messages",
        {"model": CLAUDE},
        wire.anthropic_message(CLAUDE, t, "Hi", t.output),
    ),
    "anthropic-sse-output-only": lambda t, _: _anthropic_stream("output")(t, 0),
    "anthropic-sse-input-side": lambda t, _: _anthropic_stream("input-side")(t, 0),
    "anthropic-sse-input-only": lambda t, _: _anthropic_stream("input-only")(t, 0),
    "anthropic-sse-server-tool": _anthropic_stream("input-side"),
    "gemini-json": lambda t, _: _json(
        "gemini",
        f"{GEMINI_PATH}:generateContent",
        {},
        wire.gemini_body(GEMINI, t, "Hi", t.output),
    ),
    "gemini-sse": lambda t, _: Call(
        "gemini",
        f"{GEMINI_PATH}:streamGenerateContent",
        {},
        EVENT_STREAM,
        wire.gemini_frames(GEMINI, t, PIECES, newline=b"\n"),
    ),
}
STREAMS = sorted(name for name in CALLS if "-sse" in name)


def expected(example: str, tokens: Tokens) -> dict[str, Decimal]:
    """What the example's meters must hold for one exchange that reported `tokens`."""
    if example == "anthropic":  # input_tokens is already uncached
        counts = {
            "anthropic_input_tokens": tokens.input,
            "anthropic_cache_read_input_tokens": tokens.cached,
            "anthropic_cache_write_input_tokens": tokens.cache_write,
            "anthropic_output_tokens": tokens.output,
        }
    else:  # OpenAI and Google count cached tokens inside the input
        counts = {
            f"{example}_uncached_input_tokens": tokens.input - tokens.cached,
            f"{example}_cached_input_tokens": tokens.cached,
            f"{example}_output_tokens": tokens.output,
        }
    if example == "gemini":
        counts["gemini_thinking_tokens"] = tokens.thinking
        counts["gemini_tool_use_prompt_tokens"] = tokens.tool_use
    return {meter: Decimal(count) for meter, count in counts.items()}


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


Errors = list[tuple[str, str, str]]  # (rule, reason, metadata key)


def run(
    call: Call, chunks: list[bytes], *, complete: bool = True, rules: RuleSet | None = None
) -> tuple[list[UsageEvent], Errors]:
    """The events the example's rules emit for `call` answered in `chunks`, and the rule
    errors counted. `complete` False: the body was cut short after `chunks`."""
    rules = rules or example(call.example).rules
    x = Exchange("POST", call.path, call.path, "", _headers({}), 0, customer_id="acme")
    x.candidates = rules.candidates("POST", call.path)
    if rules.request_json is not None:  # Gemini's rules read nothing from the request
        request_tap = rules.request_json.tap(JSON, None)
        request_tap.feed(json.dumps(call.request).encode())
        x.request_json = request_tap.finish(complete=True)
    assert rules.response_json is not None
    x.status = 200
    x.aborted = not complete
    x.response_headers = _headers({"Content-Type": call.content_type})
    tap = rules.response_json.tap(call.content_type, None)
    for chunk in chunks:
        tap.feed(chunk)
    x.response_json = tap.finish(complete=complete)
    errors: Errors = []
    events = rules.events(x, lambda *error: errors.append(error))
    return events, errors


def totals(call: Call, chunks: list[bytes]) -> dict[str, Decimal]:
    """Every meter of the example over the events of one complete exchange."""
    events, errors = run(call, chunks)
    assert errors == []  # every value the rules read was found (or defaulted)
    assert len(events) == EVENTS_PER_EXCHANGE[call.example]
    out = {}
    for meter in example(call.example).meters:
        values = [meter.read(e.metadata) for e in events if e.event_name == meter.event_name]
        assert not any(isinstance(v, Skip) for v in values), meter.name
        out[meter.name] = sum((v for v in values if isinstance(v, Decimal)), Decimal(0))
    return out


def split(blob: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(blob)) for c in cuts})
    return [blob[a:b] for a, b in zip([0, *points], [*points, len(blob)], strict=True)]


def _headers(values: dict[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(values))


def _call(name: str, tokens: Tokens = TOKENS) -> Call:
    return CALLS[name](tokens, tokens.input // 3)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_shape_bills_the_reported_usage_once(name: str) -> None:
    call = _call(name)
    assert totals(call, call.frames) == expected(call.example, TOKENS)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("name", STREAMS)
def test_every_split_point(name: str, fmt: str) -> None:
    call = _call(name)
    blob = b"".join(FORMATS[fmt](call.frames))
    want = expected(call.example, TOKENS)
    assert totals(call, [blob]) == want
    for cut in range(len(blob) + 1):
        assert totals(call, [blob[:cut], blob[cut:]]) == want, cut


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(STREAMS),
    fmt=st.sampled_from(sorted(FORMATS)),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=40),
)
def test_any_split_into_many_chunks(name: str, fmt: str, cuts: list[int]) -> None:
    call = _call(name)
    chunks = split(b"".join(FORMATS[fmt](call.frames)), cuts)
    assert totals(call, chunks) == expected(call.example, TOKENS)


COUNT = st.integers(min_value=0, max_value=10**9)


@st.composite
def usages(draw: st.DrawFn) -> tuple[Tokens, int]:
    """A final usage in the provider's own terms, and the input a server tool added."""
    cached, rest = draw(COUNT), draw(COUNT)
    tokens = Tokens(
        input=cached + rest,  # OpenAI and Google: cached tokens lie inside the input
        output=draw(COUNT),
        cached=cached,
        cache_write=draw(COUNT),
        thinking=draw(COUNT),
        tool_use=draw(COUNT),
    )
    return tokens, draw(st.integers(min_value=0, max_value=tokens.input))


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(CALLS)), usage=usages())
def test_any_usage_is_billed_exactly_once(name: str, usage: tuple[Tokens, int]) -> None:
    tokens, tool_input = usage
    call = CALLS[name](tokens, tool_input)
    assert totals(call, call.frames) == expected(call.example, tokens)


def test_the_server_tool_stream_reports_more_input_at_the_end_than_at_the_start() -> None:
    """The fixture really is the case the fallback exists for: message_start alone under-bills."""
    frames = _call("anthropic-sse-server-tool").frames
    datas = [json.loads(frame.split(b"data: ", 1)[1]) for frame in frames]
    start = [d["message"]["usage"]["input_tokens"] for d in datas if d["type"] == "message_start"]
    deltas = [d["usage"]["input_tokens"] for d in datas if d["type"] == "message_delta"]
    assert start == [1000] and deltas == [1000, 1500]  # cumulative: the last one counts


# call, rule, frames seen before the stream was cut -> its usage event, keys counted missing
CUT_SHORT: list[tuple[str, str, int, dict[str, Any], list[str]]] = [
    # message_start was seen: the input side is read from it, the output is not known
    (
        "anthropic-sse-input-side",
        "anthropic-messages",
        1,
        {
            "model": CLAUDE,
            "input_tokens": 1500,
            "cache_read_input_tokens": 1024,
            "cache_write_input_tokens": 256,
            "aborted": True,
        },
        ["output_tokens"],
    ),
    # only response.created was seen: no token key, and no default (`:-0`) stands in
    (
        "openai-responses-sse",
        "openai-responses",
        1,
        {"kind": "usage", "model": GPT, "aborted": True},
        ["input_tokens", "cached_input_tokens", "output_tokens"],
    ),
]


@pytest.mark.parametrize(("name", "rule", "seen", "event", "missing"), CUT_SHORT)
def test_a_stream_cut_short_bills_what_it_saw_and_counts_the_rest(
    name: str, rule: str, seen: int, event: dict[str, Any], missing: list[str]
) -> None:
    call = _call(name)
    events, errors = run(call, call.frames[:seen], complete=False)
    [usage] = [e.metadata for e in events if e.metadata.get("kind") != "cache_credit"]
    assert usage == event
    assert [error for error in errors if error[0] == rule] == [
        (rule, "missing", key) for key in missing
    ]


def test_the_multiline_format_really_spreads_payloads() -> None:
    frame = multiline(_call("openai-chat-sse").frames)[-2]  # the usage chunk
    assert frame.count(b"\ndata: ") > 3 and frame.startswith(b": keep-alive\n\n")


def _with_image(frame: bytes, size: int) -> bytes:
    """The Gemini chunk `frame` with an inline image of `size` base64 characters added."""
    body = json.loads(frame.removeprefix(b"data: "))
    image = {"inlineData": {"mimeType": "image/png", "data": "A" * size}}
    body["candidates"][0]["content"]["parts"].append(image)
    return wire.sse(body)


def test_a_count_in_an_oversized_chunk_is_never_taken_from_an_earlier_chunk() -> None:
    """Gemini image output: the last chunk holds the image (over inspect_body_limit) and the
    final counts; earlier chunks hold running totals. The final output count cannot be read,
    so the contract leaves the key out and counts body_too_large, never billing the running
    total of an earlier chunk (160 of 320 output tokens here)."""
    call = _call("gemini-sse")
    limit = 2 * max(len(frame) for frame in call.frames)  # every chunk but the image fits
    frames = [*call.frames[:-1], _with_image(call.frames[-1], limit)]
    rules = RuleSet(example("gemini").rules.rules, limit)
    events, errors = run(call, frames, rules=rules)
    [usage] = [e.metadata for e in events if e.metadata["kind"] == "usage"]
    assert "output_tokens" not in usage
    assert ("gemini-stream", "body_too_large", "output_tokens") in errors
