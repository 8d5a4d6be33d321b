"""Gemini's generateContent and streamGenerateContent?alt=sse through examples/ai/gemini.yaml.

No Google SDK is installed, so a plain HTTP client sends what the Gen AI SDKs send
(`x-goog-api-key`, a `contents` body) and reads usageMetadata as they do: from the JSON
body, or from the last stream chunk.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from tests.ai.conftest import Example, StartExample
from tests.ai.wire import Tokens

MODEL = "gemini-2.5-flash"
BODY = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}
USAGES = [
    Tokens(input=2000, output=150, cached=1500, thinking=300, tool_use=40),
    Tokens(input=12, output=4),
]


@pytest.fixture
async def gemini_example(start_example: StartExample) -> Example:
    return await start_example("gemini")


async def generate(example: Example, stream: bool) -> dict[str, Any]:
    """Call the model as a client would; returns the usageMetadata the client received."""
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    url = f"{example.url}/v1beta/models/{MODEL}:{method}"
    headers = {"x-goog-api-key": example.key}
    async with example.running.session.post(url, json=BODY, headers=headers) as response:
        assert response.status == 200, await response.text()
        if not stream:
            usage: dict[str, Any] = (await response.json())["usageMetadata"]
            return usage
        text = (await response.read()).decode()
    chunks = [json.loads(block.removeprefix("data: ")) for block in text.split("\r\n\r\n") if block]
    assert len(chunks) == len(example.upstream.pieces)
    running = [chunk["usageMetadata"].get("candidatesTokenCount") for chunk in chunks]
    assert running[0] is None and running[1] < running[-1]  # running totals: the last counts
    final: dict[str, Any] = chunks[-1]["usageMetadata"]
    return final


def expected_quantities(usage: dict[str, Any]) -> dict[str, Decimal]:
    cached = usage.get("cachedContentTokenCount", 0)
    return {
        "gemini_uncached_input_tokens": Decimal(usage["promptTokenCount"] - cached),
        "gemini_cached_input_tokens": Decimal(cached),
        "gemini_output_tokens": Decimal(usage["candidatesTokenCount"]),
        "gemini_thinking_tokens": Decimal(usage.get("thoughtsTokenCount", 0)),
        "gemini_tool_use_prompt_tokens": Decimal(usage.get("toolUsePromptTokenCount", 0)),
    }


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("tokens", USAGES)
async def test_generate_content(gemini_example: Example, tokens: Tokens, stream: bool) -> None:
    gemini_example.upstream.tokens = tokens
    reported = await generate(gemini_example, stream)
    events = await gemini_example.events("gemini.tokens")
    assert sorted(e["metadata"]["kind"] for e in events) == ["cache_credit", "usage"]
    [usage] = [e["metadata"] for e in events if e["metadata"]["kind"] == "usage"]
    assert usage == {
        "kind": "usage",
        "model": MODEL,
        "input_tokens": reported["promptTokenCount"],
        "cached_input_tokens": reported.get("cachedContentTokenCount", 0),
        "output_tokens": reported["candidatesTokenCount"],
        "thinking_tokens": reported.get("thoughtsTokenCount", 0),
        "tool_use_prompt_tokens": reported.get("toolUsePromptTokenCount", 0),
        "aborted": False,
    }
    assert await gemini_example.quantities() == expected_quantities(reported)
    assert gemini_example.upstream.customers == ["acme"]


async def test_other_model_methods_are_not_metered_as_tokens(gemini_example: Example) -> None:
    url = f"{gemini_example.url}/v1beta/models/{MODEL}:countTokens"
    headers = {"x-goog-api-key": gemini_example.key}
    async with gemini_example.running.session.post(url, json=BODY, headers=headers) as response:
        assert response.status == 200
        assert await response.json() == {"totalTokens": gemini_example.upstream.tokens.input}
    assert await gemini_example.events("gemini.tokens") == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_the_plan_bills_every_token_once(gemini_example: Example, stream: bool) -> None:
    gemini_example.upstream.tokens = Tokens(
        input=2_000_000, output=150_000, cached=1_500_000, thinking=300_000, tool_use=40_000
    )
    await generate(gemini_example, stream)
    assert await gemini_example.amounts() == {  # each line rounds half up on its own
        "gemini_uncached_input_tokens": Decimal("0.15"),  # 0.5M x $0.30
        "gemini_cached_input_tokens": Decimal("0.11"),  # 1.5M x $0.075 = 0.1125
        "gemini_output_tokens": Decimal("0.38"),  # 0.15M x $2.50 = 0.375
        "gemini_thinking_tokens": Decimal("0.75"),  # 0.3M x $2.50
        "gemini_tool_use_prompt_tokens": Decimal("0.01"),  # 0.04M x $0.30 = 0.012
    }
