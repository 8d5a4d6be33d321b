"""Provider wire formats: the JSON bodies and server-sent event streams an upstream sends.

Shapes follow the public API references of OpenAI (chat completions, Responses), Anthropic
(Messages) and Google (Gemini generateContent), trimmed to what clients and SDKs read.
`Tokens` holds the counts as the provider itself reports them: `input` is OpenAI's and
Google's prompt count (cached tokens included) but Anthropic's uncached `input_tokens`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

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


def anthropic_frames(
    model: str, tokens: Tokens, pieces: list[str], repeat_input: bool = False
) -> list[bytes]:
    """A streamed message: the input side in message_start, the output in message_delta.

    `repeat_input`: message_delta repeats the (cumulative) input-side counts, as the API
    does in newer versions; a meter that added both would count them twice.
    """
    start = anthropic_message(model, tokens, "", output=1)
    delta_usage: dict[str, Any] = {"output_tokens": tokens.output}
    if repeat_input:
        delta_usage = anthropic_usage(tokens, tokens.output)
    block = {"type": "text", "text": ""}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": start}),
        ("content_block_start", {"index": 0, "content_block": block}),
        ("ping", {}),
    ]
    for piece in pieces:
        delta = {"type": "text_delta", "text": piece}
        events.append(("content_block_delta", {"index": 0, "delta": delta}))
    events.append(("content_block_stop", {"index": 0}))
    stop = {"stop_reason": "end_turn", "stop_sequence": None}
    events.append(("message_delta", {"delta": stop, "usage": delta_usage}))
    events.append(("message_stop", {}))
    return [sse({"type": name, **body}, event=name) for name, body in events]


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
    usageMetadata, and only the last one has the final output count."""
    last = len(pieces) - 1
    return [
        sse(gemini_body(model, tokens, p, tokens.output if i == last else None), newline=newline)
        for i, p in enumerate(pieces)
    ]


# ------------------------------------------------------------------------- images


def image_body(count: int) -> dict[str, Any]:
    return {
        "created": CREATED,
        "data": [{"url": f"https://images.example/{i}.png"} for i in range(count)],
    }
