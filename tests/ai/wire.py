"""Provider wire formats: the JSON bodies and server-sent event streams an upstream sends.

Shapes follow the public API references of OpenAI (chat completions, Responses), Anthropic
(Messages) and Google (Gemini generateContent), trimmed to what clients and SDKs read.
`Tokens` holds the counts as the provider itself reports them: `input` is OpenAI's and
Google's prompt count (cached tokens included) but Anthropic's uncached `input_tokens`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Literal

CREATED = 1_750_000_000


@dataclass(frozen=True, slots=True)
class Tokens:
    """One response's usage, in the provider's own terms (see the module docstring)."""

    input: int
    output: int
    cached: int = 0  # cache reads: inside `input` for OpenAI and Google, beside it for Anthropic
    cache_write: int = 0  # Anthropic's cache_creation_input_tokens
    thinking: int = 0  # Google's thoughtsTokenCount (OpenAI's reasoning sits inside output)
    tool_use: int = 0  # Google's toolUsePromptTokenCount


def sse(data: object, event: str | None = None, newline: bytes = b"\n") -> bytes:
    """One server-sent event; `data` is JSON-encoded unless it is already bytes."""
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    head = b"event: " + event.encode() + newline if event else b""
    return head + b"data: " + payload + newline + newline


# ------------------------------------------------------------ OpenAI chat completions


def openai_chat_usage(tokens: Tokens) -> dict[str, Any]:
    return {
        "prompt_tokens": tokens.input,
        "completion_tokens": tokens.output,
        "total_tokens": tokens.input + tokens.output,
        "prompt_tokens_details": {"cached_tokens": tokens.cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def openai_chat_body(model: str, tokens: Tokens, text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": openai_chat_usage(tokens),
        "system_fingerprint": "fp_test",
    }


def _chat_chunk(model: str, choices: list[Any], usage: object = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def openai_chat_frames(model: str, tokens: Tokens | None, pieces: list[str]) -> list[bytes]:
    """A streamed completion; `tokens` None: the client did not ask for usage."""
    deltas = [{"role": "assistant", "content": ""}] + [{"content": p} for p in pieces]
    chunks = [_chat_chunk(model, [{"index": 0, "delta": d, "finish_reason": None}]) for d in deltas]
    chunks.append(_chat_chunk(model, [{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if tokens is not None:  # stream_options.include_usage: one more chunk, with no choices
        chunks.append(_chat_chunk(model, [], openai_chat_usage(tokens)))
    return [sse(c) for c in chunks] + [sse(b"[DONE]")]


# ------------------------------------------------------------------ OpenAI Responses


def openai_response_body(
    model: str, tokens: Tokens | None, text: str, status: str = "completed"
) -> dict[str, Any]:
    usage = None
    if tokens is not None:
        usage = {
            "input_tokens": tokens.input,
            "input_tokens_details": {"cached_tokens": tokens.cached},
            "output_tokens": tokens.output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": tokens.input + tokens.output,
        }
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": status,
                "role": "assistant",
                "content": content if text else [],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


def openai_response_frames(model: str, tokens: Tokens, pieces: list[str]) -> list[bytes]:
    """A streamed response: usage arrives only with `response.completed`."""
    text = "".join(pieces)
    pending = openai_response_body(model, None, "", status="in_progress")
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": pending}),
        ("response.in_progress", {"response": pending}),
    ]
    for piece in pieces:
        events.append(
            (
                "response.output_text.delta",
                {"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": piece},
            )
        )
    events.append(
        (
            "response.output_text.done",
            {"item_id": "msg_1", "output_index": 0, "content_index": 0, "text": text},
        )
    )
    events.append(("response.completed", {"response": openai_response_body(model, tokens, text)}))
    return [
        sse({"type": name, "sequence_number": i, **body}, event=name)
        for i, (name, body) in enumerate(events)
    ]


# ------------------------------------------------------------------ Anthropic Messages


def anthropic_usage(tokens: Tokens, output: int) -> dict[str, Any]:
    return {
        "input_tokens": tokens.input,
        "cache_creation_input_tokens": tokens.cache_write,
        "cache_read_input_tokens": tokens.cached,
        "output_tokens": output,
    }


def anthropic_message(model: str, tokens: Tokens, text: str, output: int) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}] if text else [],
        "stop_reason": "end_turn" if text else None,
        "stop_sequence": None,
        "usage": anthropic_usage(tokens, output),
    }


_CACHE_COUNTS = ("cache_creation_input_tokens", "cache_read_input_tokens")

AnthropicDelta = Literal["output", "input-side", "input-only"]
"""What a stream's message_delta reports beside its cumulative output_tokens.

"output": nothing else (older API versions). "input-side": the cumulative input_tokens,
cache_read_input_tokens and cache_creation_input_tokens. "input-only": input_tokens, with
the cache counts null (not applicable). The SDKs take each count that is not null from the
last message_delta, else from message_start.
"""


def anthropic_frames(
    model: str,
    tokens: Tokens,
    pieces: list[str],
    delta: AnthropicDelta = "output",
    tool_input: int = 0,
) -> list[bytes]:
    """A streamed message: the input side in message_start, the output in message_delta.

    `tokens` is the turn's final usage. `tool_input`: input that a server tool adds during
    the turn: message_start reports that much less input, an early message_delta (the first
    round, before the tool's results are read) the counts so far, and the last one the
    final counts. It needs a `delta` that reports input: else that input is never sent.
    """
    if tool_input and delta == "output":
        raise ValueError("server-tool input is only reported by a message_delta with input")
    if not 0 <= tool_input <= tokens.input:
        raise ValueError(f"tool_input {tool_input} outside 0..{tokens.input}")
    before_tool = replace(tokens, input=tokens.input - tool_input)
    block = {"type": "text", "text": ""}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": anthropic_message(model, before_tool, "", output=1)}),
        ("content_block_start", {"index": 0, "content_block": block}),
        ("ping", {}),
    ]
    for i, piece in enumerate(pieces):
        delta_text = {"type": "text_delta", "text": piece}
        events.append(("content_block_delta", {"index": 0, "delta": delta_text}))
        if tool_input and i == 0:  # the first round ends: cumulative counts so far
            events.append(_message_delta(before_tool, tokens.output // 2, delta, stop=None))
    events.append(("content_block_stop", {"index": 0}))
    events.append(_message_delta(tokens, tokens.output, delta, stop="end_turn"))
    events.append(("message_stop", {}))
    return [sse({"type": name, **body}, event=name) for name, body in events]


def _message_delta(
    tokens: Tokens, output: int, delta: AnthropicDelta, stop: str | None
) -> tuple[str, dict[str, Any]]:
    usage: dict[str, Any] = {"output_tokens": output}
    if delta == "input-side":
        usage = anthropic_usage(tokens, output)
    elif delta == "input-only":
        usage = {**anthropic_usage(tokens, output), **dict.fromkeys(_CACHE_COUNTS)}
    stop_reason = {"stop_reason": stop, "stop_sequence": None}
    return ("message_delta", {"delta": stop_reason, "usage": usage})


# --------------------------------------------------------------------- Google Gemini


def gemini_usage(tokens: Tokens, candidates: int | None) -> dict[str, Any]:
    """usageMetadata; `candidates` None: an early stream chunk that has no output count."""
    usage: dict[str, Any] = {"promptTokenCount": tokens.input}
    if candidates is not None:
        usage["candidatesTokenCount"] = candidates
    usage["totalTokenCount"] = tokens.input + (candidates or 0) + tokens.thinking
    if tokens.cached:
        usage["cachedContentTokenCount"] = tokens.cached
    if tokens.thinking:
        usage["thoughtsTokenCount"] = tokens.thinking
    if tokens.tool_use:
        usage["toolUsePromptTokenCount"] = tokens.tool_use
    return usage


def gemini_body(model: str, tokens: Tokens, text: str, candidates: int | None) -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": gemini_usage(tokens, candidates),
        "modelVersion": model,
        "responseId": "resp-1",
    }


def gemini_frames(
    model: str, tokens: Tokens, pieces: list[str], newline: bytes = b"\r\n"
) -> list[bytes]:
    """`alt=sse` chunks (CRLF-delimited, as Google sends them); every chunk has
    usageMetadata with running totals: the first has no output count yet, later ones
    count the output so far, and only the last one has the final count."""
    return [
        sse(gemini_body(model, tokens, p, _running(tokens.output, i, len(pieces))), newline=newline)
        for i, p in enumerate(pieces)
    ]


def _running(total: int, index: int, count: int) -> int | None:
    """The output count chunk `index` of `count` reports: none in the first, all in the last."""
    if index == count - 1:
        return total
    return None if index == 0 else total * index // count


# ------------------------------------------------------------------------- images


def image_body(count: int) -> dict[str, Any]:
    return {
        "created": CREATED,
        "data": [{"url": f"https://images.example/{i}.png"} for i in range(count)],
    }
