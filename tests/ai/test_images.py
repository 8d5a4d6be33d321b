"""The reference configuration's image example, end to end with the official `openai` SDK.

shared/reference/meterproxy.yaml is loaded as written, except for its fixed listen
addresses and upstream (tests need free ports): its `images` rule reads
`request.json.quality` (default standard) and `n` (default 1), and the `pro` plan prices
standard images at $0.04 and HD images at $0.08.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from proxy.config import Config, parse_config
from tests.ai.conftest import CUSTOMER, Example, issue_key
from tests.ai.upstream import AiUpstream
from tests.conftest import ADMIN_TOKEN, StartProxy
from tests.reference import REFERENCE


def reference_config(upstream: str, tmp_path: Path) -> Config:
    text = REFERENCE.read_text(encoding="utf-8")
    for fixed, ours in [
        ("listen: 127.0.0.1:8080", "listen: 127.0.0.1:0"),
        ("listen: 127.0.0.1:9090", "listen: 127.0.0.1:0"),
        ("upstream: http://127.0.0.1:9000", f"upstream: {upstream}"),
    ]:
        assert text.count(fixed) == 1, fixed  # the reference changed: revisit this test
        text = text.replace(fixed, ours)
    environ = {
        "METERPROXY_DB": str(tmp_path / "reference.db"),
        "METERPROXY_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    return parse_config(text, str(REFERENCE), environ)


@pytest.fixture
async def reference(
    start_proxy: StartProxy, aiohttp_server: Any, upstream: AiUpstream, tmp_path: Path
) -> Example:
    server = await aiohttp_server(upstream.app())
    base = f"http://127.0.0.1:{server.port}"
    running = await start_proxy(base, config=reference_config(base, tmp_path))
    return Example(running, upstream, await issue_key(running, CUSTOMER))


@pytest.fixture
async def client(reference: Example) -> AsyncIterator[AsyncOpenAI]:
    sdk = AsyncOpenAI(api_key=reference.key, base_url=f"{reference.url}/v1", max_retries=0)
    yield sdk
    await sdk.close()


# what the SDK sends -> what the event records
CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"quality": "hd", "n": 2}, {"quality": "hd", "images": 2}),
    ({"quality": "standard", "n": 3}, {"quality": "standard", "images": 3}),
    ({}, {"quality": "standard", "images": 1}),  # both defaults from the rule
    ({"quality": "high"}, {"quality": "high", "images": 1}),  # gpt-image-1: not HD
]


@pytest.mark.parametrize(("sent", "recorded"), CASES)
async def test_each_request_records_quality_and_count(
    reference: Example, client: AsyncOpenAI, sent: dict[str, Any], recorded: dict[str, Any]
) -> None:
    result = await client.images.generate(model="dall-e-3", prompt="a lighthouse", **sent)
    assert result.data is not None and len(result.data) == recorded["images"]
    [event] = await reference.events("image.generated")
    assert event["metadata"] == {"model": "dall-e-3", **recorded}


async def test_standard_and_hd_images_are_priced_per_image(
    reference: Example, client: AsyncOpenAI
) -> None:
    for sent, _ in CASES:
        await client.images.generate(model="dall-e-3", prompt="a lighthouse", **sent)
    quantities = await reference.quantities()
    assert quantities["hd_images"] == 2
    assert quantities["standard_images"] == 3 + 1 + 1
    amounts = await reference.amounts()
    assert amounts["standard_images"] == Decimal("0.20")  # 5 x $0.04
    assert amounts["hd_images"] == Decimal("0.16")  # 2 x $0.08
