"""Micro-benchmark of the body taps on the proxy's hot path (a script, not a test).

Prints nanoseconds per body byte, best of several runs, for:
- the baseline: only iterating the chunks, as the forwarding loop does anyway;
- a 4 KB JSON chat completion fed through an identity tap (feed alone, and with finish);
- a 1,000-event OpenAI-style stream fed through an event-stream tap, one event per chunk,
  selecting only usage (most events skip the JSON parse) and also "model" (none do).

Run: .venv/bin/python bench/bench_bodytap.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from rules.jsonselect import JsonPaths

RUNS = 7
# The reference config's chat-tokens rule reads these from the response.
USAGE = JsonPaths(["usage.prompt_tokens", "usage.completion_tokens"], 1_000_000)
# Worst case for a stream: "model" is in every event, so every event is parsed.
WITH_MODEL = JsonPaths(["model", "usage.prompt_tokens", "usage.completion_tokens"], 1_000_000)


def chat_completion(size: int) -> bytes:
    """A chat completion body of about `size` bytes."""
    text = "lorem ipsum " * (size // 12)
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 812, "total_tokens": 821},
    }
    return json.dumps(body).encode()


def event_stream(events: int) -> list[bytes]:
    """An OpenAI-style stream: one chunk per event, usage in the last one."""
    chunk = (
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o",'
        b'"choices":[{"index":0,"delta":{"content":"token "},"finish_reason":null}],'
        b'"usage":null}\n\n'
    )
    last = (
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[],'
        b'"usage":{"prompt_tokens":9,"completion_tokens":1000,"total_tokens":1009}}\n\n'
        b"data: [DONE]\n\n"
    )
    return [chunk] * (events - 1) + [last]


def best_ns(run: Callable[[], object], repeat: int) -> float:
    """The fastest of RUNS timings of `repeat` calls, per call."""
    timings = []
    for _ in range(RUNS):
        start = time.perf_counter_ns()
        for _ in range(repeat):
            run()
        timings.append((time.perf_counter_ns() - start) / repeat)
    return min(timings)


def iterate_only(chunks: list[bytes]) -> Callable[[], object]:
    def run() -> int:
        total = 0
        for chunk in chunks:
            total += len(chunk)
        return total

    return run


def tap_feed(
    paths: JsonPaths, chunks: list[bytes], content_type: str, finish: bool
) -> Callable[[], object]:
    def run() -> object:
        tap = paths.tap(content_type, None)
        for chunk in chunks:
            tap.feed(chunk)
        return tap.finish(True) if finish else tap

    return run


def report(name: str, chunks: list[bytes], cases: dict[str, Callable[[], object]]) -> None:
    size = sum(len(c) for c in chunks)
    repeat = max(1, 2_000_000 // size)
    print(f"{name}: {size:,} bytes in {len(chunks):,} chunks")
    for label, run in cases.items():
        print(f"  {label:<28} {best_ns(run, repeat) / size:8.2f} ns/byte")


def main() -> None:
    body = chat_completion(4096)
    json_chunks = [body[i : i + 1024] for i in range(0, len(body), 1024)]
    report(
        "4 KB JSON, identity",
        json_chunks,
        {
            "iterate chunks only": iterate_only(json_chunks),
            "tap feed": tap_feed(USAGE, json_chunks, "application/json", finish=False),
            "tap feed + finish": tap_feed(USAGE, json_chunks, "application/json", finish=True),
        },
    )
    stream = event_stream(1000)
    report(
        "1,000-event stream",
        stream,
        {
            "iterate chunks only": iterate_only(stream),
            "tap feed + finish (usage)": tap_feed(USAGE, stream, "text/event-stream", True),
            "same, with model": tap_feed(WITH_MODEL, stream, "text/event-stream", True),
        },
    )


if __name__ == "__main__":
    main()
