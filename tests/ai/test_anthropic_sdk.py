"""The official `anthropic` SDK through meterproxy running examples/ai/anthropic.yaml.

A stream splits its usage: the input side (input, cache reads, cache writes) in
message_start, the cumulative output in message_delta, which newer API versions also report
the cumulative input side in (more input than message_start when a server tool ran). The
one event per exchange must hold the usage the SDK accumulated, in every variant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from anthropic import AsyncAnthropic

from tests.ai.conftest import Example, StartExample
from tests.ai.wire import AnthropicDelta, Tokens

MODEL = "claude-sonnet-4-6"
MESSAGES: Any = [{"role": "user", "content": "Say hello"}]
USAGES = [
    Tokens(input=25, output=15, cached=2048, cache_write=512),
    Tokens(input=9, output=3),
]


@pytest.fixture
async def anthropic_example(start_example: StartExample) -> Example:
    return await start_example("anthropic")


@pytest.fixture
async def client(anthropic_example: Example) -> AsyncIterator[AsyncAnthropic]:
    sdk = AsyncAnthropic(
        api_key=anthropic_example.key, base_url=anthropic_example.url, max_retries=0
    )
    yield sdk
    await sdk.close()


def expected_quantities(usage: Any) -> dict[str, Decimal]:
    """What the meters must hold for one exchange, from the usage the SDK reports."""
    return {
        "anthropic_input_tokens": Decimal(usage.input_tokens),
        "anthropic_cache_read_input_tokens": Decimal(usage.cache_read_input_tokens or 0),
        "anthropic_cache_write_input_tokens": Decimal(usage.cache_creation_input_tokens or 0),
        "anthropic_output_tokens": Decimal(usage.output_tokens),
    }


async def the_event(example: Example) -> dict[str, Any]:
    """The metadata of the one event an exchange emits."""
    [event] = await example.events("anthropic.tokens")
    metadata: dict[str, Any] = event["metadata"]
    return metadata


def recorded(usage: Any) -> dict[str, Any]:
    """The event an exchange must store for the usage the SDK reports."""
    return {
        "model": MODEL,
        "input_tokens": usage.input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens or 0,
        "cache_write_input_tokens": usage.cache_creation_input_tokens or 0,
        "output_tokens": usage.output_tokens,
        "aborted": False,
    }


@pytest.mark.parametrize("tokens", USAGES)
async def test_message_json(
    anthropic_example: Example, client: AsyncAnthropic, tokens: Tokens
) -> None:
    anthropic_example.upstream.tokens = tokens
    message = await client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert await the_event(anthropic_example) == recorded(message.usage)
    assert await anthropic_example.quantities() == expected_quantities(message.usage)


# what message_delta reports beside the output, and whether a server tool added input
STREAMS: list[tuple[AnthropicDelta, bool]] = [
    ("output", False),  # older API versions: the input side only in message_start
    ("input-side", False),  # newer: repeated, cumulatively, in message_delta
    ("input-only", False),  # newer, cache counts null: those come from message_start
    ("input-side", True),  # a server tool: message_delta reports more input than the start
    ("input-only", True),
]


@pytest.mark.parametrize(
    ("delta", "server_tool"), STREAMS, ids=[f"{d}{'-server-tool' * t}" for d, t in STREAMS]
)
@pytest.mark.parametrize("tokens", USAGES)
async def test_message_stream(
    anthropic_example: Example,
    client: AsyncAnthropic,
    tokens: Tokens,
    delta: AnthropicDelta,
    server_tool: bool,
) -> None:
    upstream = anthropic_example.upstream
    upstream.tokens = tokens
    upstream.anthropic_delta = delta
    upstream.server_tool_input = tokens.input // 2 if server_tool else 0
    async with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        text = await stream.get_final_text()
        final = await stream.get_final_message()
    assert text == "Hello!"
    assert final.usage.input_tokens == tokens.input  # the SDK's view: the final count
    assert await the_event(anthropic_example) == recorded(final.usage)
    assert await anthropic_example.quantities() == expected_quantities(final.usage)


async def test_input_that_a_server_tool_adds_mid_stream_is_billed(
    anthropic_example: Example, client: AsyncAnthropic
) -> None:
    upstream = anthropic_example.upstream
    upstream.tokens = Tokens(input=10_682, output=510)
    upstream.anthropic_delta = "input-side"
    upstream.server_tool_input = 8_003  # e.g. web search results read during the turn
    stream = await client.messages.create(
        model=MODEL, max_tokens=64, messages=MESSAGES, stream=True
    )
    events = [event async for event in stream]
    starts = [e.message.usage.input_tokens for e in events if e.type == "message_start"]
    deltas = [e.usage.input_tokens for e in events if e.type == "message_delta"]
    assert starts == [2_679] and deltas == [2_679, 10_682]  # cumulative: the last one counts
    quantities = await anthropic_example.quantities()
    assert quantities["anthropic_input_tokens"] == 10_682
    assert quantities["anthropic_output_tokens"] == 510


async def test_raw_stream_events_through_the_sdk(
    anthropic_example: Example, client: AsyncAnthropic
) -> None:
    stream = await client.messages.create(
        model=MODEL, max_tokens=64, messages=MESSAGES, stream=True
    )
    kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    tokens = anthropic_example.upstream.tokens
    assert await the_event(anthropic_example) == {
        "model": MODEL,
        "input_tokens": tokens.input,
        "cache_read_input_tokens": tokens.cached,
        "cache_write_input_tokens": tokens.cache_write,
        "output_tokens": tokens.output,
        "aborted": False,
    }


async def test_json_and_streamed_messages_add_up(
    anthropic_example: Example, client: AsyncAnthropic
) -> None:
    upstream = anthropic_example.upstream
    totals: dict[str, Decimal] = {}
    calls: list[tuple[Tokens, AnthropicDelta | None, int]] = [  # delta None: a JSON body
        (USAGES[0], "input-side", 10),
        (USAGES[1], None, 0),
        (USAGES[0], "output", 0),
        (USAGES[0], None, 0),
        (USAGES[1], "input-only", 4),
    ]
    for tokens, delta, tool_input in calls:
        upstream.tokens = tokens
        upstream.anthropic_delta = delta or "output"
        upstream.server_tool_input = tool_input
        if delta is not None:
            async with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as s:
                reported = (await s.get_final_message()).usage
        else:
            message = await client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
            reported = message.usage
        for meter, value in expected_quantities(reported).items():
            totals[meter] = totals.get(meter, Decimal(0)) + value
    assert await anthropic_example.quantities() == totals
    assert len(await anthropic_example.events("anthropic.tokens")) == len(calls)


async def test_the_plan_bills_every_token_once(
    anthropic_example: Example, client: AsyncAnthropic
) -> None:
    upstream = anthropic_example.upstream
    upstream.tokens = Tokens(input=1_000_000, output=100_000, cached=2_000_000, cache_write=400_000)
    upstream.anthropic_delta = "input-side"  # the stream states the input side twice
    upstream.server_tool_input = 400_000  # message_start says 0.6M: billing it would be $1.80
    async with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        await stream.get_final_message()
    assert await anthropic_example.amounts() == {
        "anthropic_input_tokens": Decimal("3.00"),  # 1M x $3
        "anthropic_cache_read_input_tokens": Decimal("0.60"),  # 2M x $0.30
        "anthropic_cache_write_input_tokens": Decimal("1.50"),  # 0.4M x $3.75
        "anthropic_output_tokens": Decimal("1.50"),  # 0.1M x $15
    }


async def test_the_x_api_key_header_identifies_the_customer(anthropic_example: Example) -> None:
    headers = {"x-api-key": anthropic_example.key, "anthropic-version": "2023-06-01"}
    body = {"model": MODEL, "max_tokens": 64, "messages": MESSAGES}
    url = f"{anthropic_example.url}/v1/messages"
    async with anthropic_example.running.session.post(url, json=body, headers=headers) as r:
        assert r.status == 200
    assert anthropic_example.upstream.customers == ["acme"]
    output = (await anthropic_example.quantities())["anthropic_output_tokens"]
    assert output == anthropic_example.upstream.tokens.output
