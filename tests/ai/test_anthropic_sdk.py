"""The official `anthropic` SDK through meterproxy running examples/ai/anthropic.yaml.

A stream splits its usage: the input side (input, cache reads, cache writes) in
message_start, the cumulative output in message_delta, which newer API versions also
repeat the input side in. The meters must equal the usage the SDK accumulated either way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from anthropic import AsyncAnthropic

from tests.ai.conftest import Example, StartExample
from tests.ai.wire import Tokens

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


@pytest.mark.parametrize("tokens", USAGES)
async def test_message_json(
    anthropic_example: Example, client: AsyncAnthropic, tokens: Tokens
) -> None:
    anthropic_example.upstream.tokens = tokens
    message = await client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    events = await anthropic_example.events("anthropic.tokens")
    [usage] = [e["metadata"] for e in events if e["metadata"]["part"] == "usage"]
    assert usage == {
        "part": "usage",
        "model": MODEL,
        "content_type": "application/json; charset=utf-8",
        "input_tokens": message.usage.input_tokens,
        "cache_read_input_tokens": message.usage.cache_read_input_tokens,
        "cache_write_input_tokens": message.usage.cache_creation_input_tokens,
        "output_tokens": message.usage.output_tokens,
        "aborted": False,
    }
    assert await anthropic_example.quantities() == expected_quantities(message.usage)


@pytest.mark.parametrize("repeat_input", [False, True], ids=["delta-output-only", "delta-repeats"])
@pytest.mark.parametrize("tokens", USAGES)
async def test_message_stream(
    anthropic_example: Example, client: AsyncAnthropic, tokens: Tokens, repeat_input: bool
) -> None:
    anthropic_example.upstream.tokens = tokens
    anthropic_example.upstream.repeat_input_in_delta = repeat_input
    async with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        text = await stream.get_final_text()
        final = await stream.get_final_message()
    assert text == "Hello!"
    assert final.usage.input_tokens == tokens.input  # the SDK's view: what was reported
    events = await anthropic_example.events("anthropic.tokens")
    [start] = [e["metadata"] for e in events if e["metadata"]["part"] == "message_start"]
    assert start["input_tokens"] == final.usage.input_tokens
    assert start["cache_read_input_tokens"] == final.usage.cache_read_input_tokens
    assert start["cache_write_input_tokens"] == final.usage.cache_creation_input_tokens
    assert await anthropic_example.quantities() == expected_quantities(final.usage)


async def test_raw_stream_events_through_the_sdk(
    anthropic_example: Example, client: AsyncAnthropic
) -> None:
    stream = await client.messages.create(
        model=MODEL, max_tokens=64, messages=MESSAGES, stream=True
    )
    kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    [usage] = [
        e["metadata"]
        for e in await anthropic_example.events("anthropic.tokens")
        if e["metadata"]["part"] == "usage"
    ]
    assert usage["output_tokens"] == anthropic_example.upstream.tokens.output
    assert usage["content_type"] == "text/event-stream; charset=utf-8"


async def test_json_and_streamed_messages_add_up(
    anthropic_example: Example, client: AsyncAnthropic
) -> None:
    upstream = anthropic_example.upstream
    totals: dict[str, Decimal] = {}
    for tokens, stream in [(USAGES[0], True), (USAGES[1], False), (USAGES[0], False)]:
        upstream.tokens = tokens
        upstream.repeat_input_in_delta = True
        if stream:
            async with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as s:
                reported = (await s.get_final_message()).usage
        else:
            message = await client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
            reported = message.usage
        for meter, value in expected_quantities(reported).items():
            totals[meter] = totals.get(meter, Decimal(0)) + value
    assert await anthropic_example.quantities() == totals


async def test_the_plan_bills_every_token_once(
    anthropic_example: Example, client: AsyncAnthropic
) -> None:
    upstream = anthropic_example.upstream
    upstream.tokens = Tokens(input=1_000_000, output=100_000, cached=2_000_000, cache_write=400_000)
    upstream.repeat_input_in_delta = True  # the stream states the input side twice
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
