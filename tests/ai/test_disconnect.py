"""A client that hangs up mid-stream: usage that comes later is still recorded, if draining.

The upstream streams a chat completion (frames: role, "Hel", "lo", "!", stop, usage, [DONE])
paced by gates: the client reads the first frame and disconnects, then the upstream sends the
rest. meterproxy notices the disconnect on its next write, then (by default) keeps reading
the upstream, bounded by `proxy.drain_after_disconnect` and `proxy.max_concurrent_drains`.
"""

from __future__ import annotations

from typing import Any

from anthropic import AsyncAnthropic

from tests.ai import wire
from tests.ai.conftest import Example, StartExample, until
from tests.ai.upstream import AiUpstream, Pacing
from tests.ai.wire import Tokens

AFTER_DISCONNECT = 1  # the first frame the upstream sends once the client has left
USAGE = 5  # the chat frame that holds the usage
BODY = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "Say hello"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}
TOKENS = Tokens(input=700, output=90, cached=512)


async def read_first_frame_and_leave(example: Example) -> bytes:
    """Start a streamed completion, read its first event, then close the connection."""
    headers = {"Authorization": f"Bearer {example.key}"}
    url = f"{example.url}/v1/chat/completions"
    async with example.running.session.post(url, json=BODY, headers=headers) as response:
        assert response.status == 200
        first = await response.content.readuntil(b"\n\n")
        response.close()
    return first


async def leave_early(example: Example) -> Pacing:
    """One stream whose client left after the first frame; the upstream then goes on."""
    pacing = example.upstream.pace()
    pacing.hold(USAGE)
    pacing.hold(AFTER_DISCONNECT)
    first = await read_first_frame_and_leave(example)
    assert first.startswith(b"data: ") and b'"role": "assistant"' in first
    pacing.hold(AFTER_DISCONNECT).set()
    return pacing


def usage_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["metadata"] for e in events if e["metadata"]["kind"] == "usage"]


async def test_drained_stream_records_the_usage_and_aborted(start_example: StartExample) -> None:
    example = await start_example("openai")
    example.upstream.tokens = TOKENS
    pacing = await leave_early(example)
    pacing.hold(USAGE).set()
    [usage] = usage_events(await example.wait_for_events("openai.tokens", 2))
    assert usage == {
        "kind": "usage",
        "model": "gpt-4o",
        "input_tokens": 700,
        "cached_input_tokens": 512,
        "output_tokens": 90,
        "aborted": True,
    }
    assert (await example.quantities())["openai_uncached_input_tokens"] == 700 - 512
    await pacing.ended.wait()


async def test_without_draining_the_event_records_what_was_seen(
    start_example: StartExample,
) -> None:
    example = await start_example("openai", drain_after_disconnect_s=0)
    pacing = await leave_early(example)
    [usage] = usage_events(await example.wait_for_events("openai.tokens", 2))
    # Cut short before the usage: no token key, and no default (`:-0`) stands in for one.
    assert usage == {"kind": "usage", "model": "gpt-4o", "aborted": True}
    assert not pacing.written(USAGE).is_set()  # the usage was never sent while we listened
    pacing.hold(USAGE).set()
    await pacing.ended.wait()
    running = example.running
    missing = running.metric("meterproxy_rule_errors_total", rule="openai-chat", reason="missing")
    assert missing == 3  # prompt, cached and completion tokens: counted, never billed as 0


async def test_a_drain_stops_at_its_time_budget(start_example: StartExample) -> None:
    example = await start_example("openai", drain_after_disconnect_s=0.05)
    pacing = await leave_early(example)  # the usage frame stays held: the drain runs out
    [usage] = usage_events(await example.wait_for_events("openai.tokens", 2))
    assert "input_tokens" not in usage and usage["aborted"] is True
    pacing.hold(USAGE).set()
    await pacing.ended.wait()


async def test_concurrent_drains_are_capped(start_example: StartExample) -> None:
    example = await start_example("openai", max_concurrent_drains=1)
    forwarder = example.running.mp.forwarder
    assert forwarder is not None
    drains = forwarder.state.drains
    first = await leave_early(example)
    await until(drains.locked)  # the first exchange is draining, its usage still held
    second = await leave_early(example)
    [capped] = usage_events(await example.wait_for_events("openai.tokens", 2))
    assert "input_tokens" not in capped and capped["aborted"] is True
    second.hold(USAGE).set()
    first.hold(USAGE).set()
    events = await example.wait_for_events("openai.tokens", 4)
    [drained] = [u for u in usage_events(events) if u != capped]  # the first, read to its end
    assert drained["output_tokens"] == example.upstream.tokens.output
    assert drained["aborted"] is True
    assert not drains.locked()
    await first.ended.wait()
    await second.ended.wait()


def final_message_delta(upstream: AiUpstream) -> int:
    """The index of the last message_delta (the final counts) in the upstream's next stream."""
    frames = wire.anthropic_frames(
        "m", upstream.tokens, upstream.pieces, upstream.anthropic_delta, upstream.server_tool_input
    )
    return len(frames) - 2  # message_stop follows it


async def leave_anthropic_stream_after_message_start(example: Example) -> Pacing:
    """The official SDK closes its stream after message_start; the upstream then goes on,
    up to the final message_delta, which waits for `pacing.hold(final_message_delta(...))`."""
    pacing = example.upstream.pace()
    pacing.hold(AFTER_DISCONNECT)
    pacing.hold(final_message_delta(example.upstream))
    client = AsyncAnthropic(api_key=example.key, base_url=example.url, max_retries=0)
    try:
        stream = await client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=64,
            stream=True,
            messages=[{"role": "user", "content": "Say hello"}],
        )
        async for event in stream:
            assert event.type == "message_start"
            break
        await stream.close()
    finally:
        await client.close()
    pacing.hold(AFTER_DISCONNECT).set()
    return pacing


async def test_anthropic_sdk_client_that_stops_reading(start_example: StartExample) -> None:
    """Drained: message_delta still counts, its input (a server tool's too) over message_start's."""
    example = await start_example("anthropic")
    example.upstream.tokens = Tokens(input=25, output=15, cached=100, cache_write=10)
    example.upstream.anthropic_delta = "input-side"
    example.upstream.server_tool_input = 20  # message_start reports 5
    pacing = await leave_anthropic_stream_after_message_start(example)
    pacing.hold(final_message_delta(example.upstream)).set()
    [event] = await example.wait_for_events("anthropic.tokens", 1)
    assert event["metadata"]["aborted"] is True
    assert await example.quantities() == {
        "anthropic_input_tokens": 25,
        "anthropic_cache_read_input_tokens": 100,
        "anthropic_cache_write_input_tokens": 10,
        "anthropic_output_tokens": 15,
    }
    await pacing.ended.wait()


async def test_anthropic_stream_left_without_draining_bills_message_start(
    start_example: StartExample,
) -> None:
    """Cut short: the input side falls back to message_start; the output is not known."""
    example = await start_example("anthropic", drain_after_disconnect_s=0)
    example.upstream.tokens = Tokens(input=25, output=15, cached=100, cache_write=10)
    example.upstream.anthropic_delta = "input-side"
    pacing = await leave_anthropic_stream_after_message_start(example)
    [event] = await example.wait_for_events("anthropic.tokens", 1)
    assert event["metadata"] == {
        "model": "claude-sonnet-4-6",
        "input_tokens": 25,
        "cache_read_input_tokens": 100,
        "cache_write_input_tokens": 10,
        "aborted": True,
    }
    last_delta = final_message_delta(example.upstream)
    assert not pacing.written(last_delta).is_set()  # the output count was never sent
    pacing.hold(last_delta).set()
    await pacing.ended.wait()
    running = example.running
    errors = running.metric(
        "meterproxy_rule_errors_total", rule="anthropic-messages", reason="missing"
    )
    assert errors == 1  # output_tokens: counted, never billed as 0
