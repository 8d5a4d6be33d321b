"""The SSE tap never holds a stream back: each event reaches the client as it is sent.

The upstream writes the first event, then waits on a gate that the test opens only after
the client (the official SDK) has received that event; a proxy that buffered would stall
here and the bounded wait would fail. The usage is still read once the stream ends.
"""

from __future__ import annotations

import asyncio

from anthropic import AsyncAnthropic
from openai import AsyncOpenAI

from tests.ai.conftest import StartExample

PATIENCE_S = 10  # only bounds a stalled test; nothing here measures speed


async def test_openai_chunks_are_not_buffered(start_example: StartExample) -> None:
    example = await start_example("openai")
    pacing = example.upstream.pace()
    second = pacing.hold(1)
    client = AsyncOpenAI(api_key=example.key, base_url=f"{example.url}/v1", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Say hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = aiter(stream)
        first = await asyncio.wait_for(anext(chunks), PATIENCE_S)
        assert first.choices[0].delta.role == "assistant"
        assert not pacing.written(1).is_set()  # the upstream has not sent the second event
        second.set()
        rest = [chunk async for chunk in chunks]
    finally:
        await client.close()
    assert rest[-1].usage is not None
    events = await example.events("openai.tokens")
    [usage] = [e["metadata"] for e in events if e["metadata"]["kind"] == "usage"]
    assert usage["output_tokens"] == rest[-1].usage.completion_tokens


async def test_anthropic_events_are_not_buffered(start_example: StartExample) -> None:
    example = await start_example("anthropic")
    pacing = example.upstream.pace()
    second = pacing.hold(1)
    client = AsyncAnthropic(api_key=example.key, base_url=example.url, max_retries=0)
    try:
        stream = await client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=64,
            messages=[{"role": "user", "content": "Say hello"}],
            stream=True,
        )
        events = aiter(stream)
        first = await asyncio.wait_for(anext(events), PATIENCE_S)
        assert first.type == "message_start"
        assert not pacing.written(1).is_set()
        second.set()
        kinds = [event.type async for event in events]
    finally:
        await client.close()
    assert kinds[-1] == "message_stop"
    quantities = await example.quantities()
    assert quantities["anthropic_input_tokens"] == example.upstream.tokens.input
    assert quantities["anthropic_output_tokens"] == example.upstream.tokens.output
