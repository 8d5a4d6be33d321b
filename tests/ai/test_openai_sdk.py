"""The official `openai` SDK through meterproxy running examples/ai/openai.yaml.

The stored usage event must hold exactly the usage the SDK saw (what the upstream reported),
and the meters must split input into uncached and cached tokens without counting any twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.ai.conftest import Example, StartExample
from tests.ai.wire import Tokens

MODEL = "gpt-4o"
MESSAGES: Any = [{"role": "user", "content": "Say hello"}]
USAGES = [
    Tokens(input=1200, output=300, cached=1024),
    Tokens(input=17, output=5),  # no cache hit: the credit event takes nothing away
]


@pytest.fixture
async def openai_example(start_example: StartExample) -> Example:
    return await start_example("openai")


@pytest.fixture
async def client(openai_example: Example) -> AsyncIterator[AsyncOpenAI]:
    sdk = AsyncOpenAI(
        api_key=openai_example.key, base_url=f"{openai_example.url}/v1", max_retries=0
    )
    yield sdk
    await sdk.close()


def by_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["metadata"] for e in events if e["metadata"]["kind"] == kind]


async def one_exchange(example: Example) -> tuple[dict[str, Any], dict[str, Any]]:
    """The usage event and the cache credit: the two events one exchange emits."""
    events = await example.events("openai.tokens")
    assert sorted(e["metadata"]["kind"] for e in events) == ["cache_credit", "usage"]
    [usage], [credit] = by_kind(events, "usage"), by_kind(events, "cache_credit")
    return usage, credit


def expected_quantities(*usages: Tokens) -> dict[str, Decimal]:
    return {
        "openai_uncached_input_tokens": Decimal(sum(u.input - u.cached for u in usages)),
        "openai_cached_input_tokens": Decimal(sum(u.cached for u in usages)),
        "openai_output_tokens": Decimal(sum(u.output for u in usages)),
    }


@pytest.mark.parametrize("tokens", USAGES)
async def test_chat_completion_json(
    openai_example: Example, client: AsyncOpenAI, tokens: Tokens
) -> None:
    openai_example.upstream.tokens = tokens
    completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.usage is not None and completion.choices[0].message.content == "Hello!"
    usage, credit = await one_exchange(openai_example)
    assert credit["input_tokens"] == f"-{_cached(completion.usage.prompt_tokens_details)}"
    assert usage == {
        "kind": "usage",
        "model": MODEL,
        "input_tokens": completion.usage.prompt_tokens,
        "cached_input_tokens": _cached(completion.usage.prompt_tokens_details),
        "output_tokens": completion.usage.completion_tokens,
        "aborted": False,
    }
    assert await openai_example.quantities() == expected_quantities(tokens)


@pytest.mark.parametrize("tokens", USAGES)
async def test_chat_completion_stream_with_usage(
    openai_example: Example, client: AsyncOpenAI, tokens: Tokens
) -> None:
    openai_example.upstream.tokens = tokens
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    reported = chunks[-1].usage
    assert reported is not None and chunks[-1].choices == []  # usage rides in the last chunk
    usage, _ = await one_exchange(openai_example)
    assert usage["input_tokens"] == reported.prompt_tokens
    assert usage["cached_input_tokens"] == _cached(reported.prompt_tokens_details)
    assert usage["output_tokens"] == reported.completion_tokens
    assert await openai_example.quantities() == expected_quantities(tokens)


async def test_chat_stream_without_usage_records_no_tokens_rather_than_zero(
    openai_example: Example, client: AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert [chunk.usage async for chunk in stream] == [None] * 5  # role, 3 pieces, stop
    usage, credit = await one_exchange(openai_example)
    assert credit["input_tokens"] == "-0"  # a stream read to its end: the default applies
    assert "input_tokens" not in usage and "output_tokens" not in usage
    running = openai_example.running
    errors = running.metric("meterproxy_rule_errors_total", rule="openai-chat", reason="missing")
    assert errors == 2  # prompt_tokens and completion_tokens: visible, never billed as 0


@pytest.mark.parametrize("tokens", USAGES)
async def test_responses_json(openai_example: Example, client: AsyncOpenAI, tokens: Tokens) -> None:
    openai_example.upstream.tokens = tokens
    response = await client.responses.create(model=MODEL, input="Say hello")
    assert response.usage is not None and response.output_text == "Hello!"
    await _assert_responses_usage(openai_example, response.usage, tokens)


@pytest.mark.parametrize("tokens", USAGES)
async def test_responses_stream(
    openai_example: Example, client: AsyncOpenAI, tokens: Tokens
) -> None:
    openai_example.upstream.tokens = tokens
    stream = await client.responses.create(model=MODEL, input="Say hello", stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.completed"
    reported = events[-1].response.usage
    assert reported is not None
    await _assert_responses_usage(openai_example, reported, tokens)


async def test_usage_accumulates_over_exchanges_of_both_apis_and_shapes(
    openai_example: Example, client: AsyncOpenAI
) -> None:
    first, second, third = Tokens(900, 10, 512), Tokens(40, 7, 0), Tokens(3000, 200, 2048)
    openai_example.upstream.tokens = first
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    openai_example.upstream.tokens = second
    stream = await client.responses.create(model=MODEL, input="Say hello", stream=True)
    _ = [event async for event in stream]
    openai_example.upstream.tokens = third
    await client.responses.create(model=MODEL, input="Say hello")
    assert await openai_example.quantities() == expected_quantities(first, second, third)
    assert len(await openai_example.events("openai.tokens")) == 3 * 2  # usage + credit each


@pytest.mark.parametrize("api", ["chat", "responses-json", "responses-stream"])
async def test_the_plan_bills_every_token_once(
    openai_example: Example, client: AsyncOpenAI, api: str
) -> None:
    openai_example.upstream.tokens = Tokens(input=1_200_000, output=500_000, cached=1_000_000)
    if api == "chat":
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    elif api == "responses-json":
        await client.responses.create(model=MODEL, input="Say hello")
    else:
        stream = await client.responses.create(model=MODEL, input="Say hello", stream=True)
        _ = [event async for event in stream]
    assert await openai_example.amounts() == {
        "openai_uncached_input_tokens": Decimal("0.50"),  # 0.2M x $2.50
        "openai_cached_input_tokens": Decimal("1.25"),  # 1M x $1.25
        "openai_output_tokens": Decimal("5.00"),  # 0.5M x $10
    }


async def _assert_responses_usage(example: Example, reported: Any, tokens: Tokens) -> None:
    # One rule reads both shapes (`usage` or `response.usage`): no zero-filled events.
    usage, credit = await one_exchange(example)
    assert usage == {
        "kind": "usage",
        "model": MODEL,
        "input_tokens": reported.input_tokens,
        "cached_input_tokens": reported.input_tokens_details.cached_tokens,
        "output_tokens": reported.output_tokens,
        "aborted": False,
    }
    assert credit["input_tokens"] == f"-{reported.input_tokens_details.cached_tokens}"
    assert await example.quantities() == expected_quantities(tokens)


def _cached(details: Any) -> int:
    return 0 if details is None or details.cached_tokens is None else int(details.cached_tokens)
