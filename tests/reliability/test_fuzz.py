"""Fuzzing: generated ingest batches and selector strings never cause a server error or an
unhandled exception, and every accepted event reads back identically."""

from __future__ import annotations

import json
import os
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.events import format_timestamp, now_ms
from billing.settings import ConfigError
from proxy.admin.jsonout import dumps
from proxy.config import parse_config
from tests.conftest import AUTH, Running, StartProxy
from tests.proxy.test_config import BASE

FUZZ = settings(
    max_examples=int(os.environ.get("METERPROXY_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

scalars = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.decimals(
        allow_nan=False,
        allow_infinity=False,
        places=6,
        min_value=Decimal("-1e12"),
        max_value=Decimal("1e12"),
    ),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
event = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(st.text(min_size=0, max_size=40), st.integers()),
        "customer_id": st.one_of(
            st.from_regex(r"[A-Za-z0-9._:@-]{1,20}", fullmatch=True), st.text(max_size=10)
        ),
        "event_name": st.one_of(
            st.sampled_from(["api.call", "bandwidth", "x"]), st.text(max_size=10)
        ),
        "timestamp": st.one_of(
            st.none(),
            st.text(max_size=30),
            st.integers(),
            st.just(format_timestamp(now_ms() - 60_000)),
        ),
        "metadata": st.one_of(st.dictionaries(st.text(max_size=12), scalars, max_size=6), scalars),
    },
)
batch = st.one_of(
    st.fixed_dictionaries({"events": st.lists(event, min_size=0, max_size=8)}),
    scalars,
    st.dictionaries(st.text(max_size=8), scalars, max_size=3),
)


def encode(value: Any) -> bytes:
    """JSON with Decimals as exact numbers (not strings)."""
    return dumps(value).encode()


@pytest.fixture
async def running(start_proxy: StartProxy, unused_tcp_port: int) -> Running:
    return await start_proxy(f"http://127.0.0.1:{unused_tcp_port}")


@FUZZ
@given(payload=batch)
async def test_generated_ingest_batches_never_cause_a_server_error(
    running: Running, payload: Any
) -> None:
    if isinstance(payload, dict) and isinstance(payload.get("events"), list):
        for e in payload["events"]:  # unique across examples, or they dedup silently
            if isinstance(e.get("event_id"), str) and e["event_id"]:
                e["event_id"] = f"{uuid.uuid4().hex[:8]}-{e['event_id']}"[:256]
    async with running.session.post(
        f"{running.admin_url}/events/ingest", data=encode(payload), headers=AUTH
    ) as r:
        assert r.status in (200, 400), await r.text()
        body = await r.json()
    if r.status == 400:
        assert body["error"]["code"] in ("invalid_events",)
        return
    for sent in payload["events"]:
        async with running.session.get(
            f"{running.admin_url}/events/{sent['event_id']}", headers=AUTH
        ) as r:
            assert r.status == 200
            stored = json.loads(await r.text(), parse_float=Decimal)
        assert stored["customer_id"] == sent["customer_id"]
        assert stored["event_name"] == sent["event_name"]
        assert stored["metadata"] == json.loads(
            encode(sent.get("metadata") or {}), parse_float=Decimal
        )


selector_text = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda a, b: "${" + a + b + "}",
        st.sampled_from(
            [
                "request.",
                "response.",
                "request.json.",
                "response.header.",
                "exchange.",
                "env.",
                "customer.",
                "request.query.",
                "",
            ]
        ),
        st.text(max_size=15),
    ),
    st.builds(
        lambda a, d: "${" + a + ":-" + d + "}",
        st.sampled_from(["request.json.n", "response.status", "request.header.x"]),
        st.text(max_size=8),
    ),
)


@settings(max_examples=300, deadline=None)
@given(value=selector_text)
def test_generated_selector_strings_are_accepted_or_named_config_errors(value: str) -> None:
    quoted = json.dumps(value)  # a YAML double-quoted scalar is JSON-compatible
    text = BASE.replace("status: ${response.status}", f"status: {quoted}")
    try:
        config = parse_config(text, "fuzz.yaml", environ={})
    except ConfigError as exc:
        assert all(p.line is not None for p in exc.problems)
        return
    assert config.rules.rules[0].metadata[0][0] == "status"


# text the ingest API accepts: everything but NUL (refused: no store can hold it)
NO_NUL = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
valid_metadata = st.dictionaries(
    st.text(NO_NUL, min_size=1, max_size=20),
    st.one_of(
        st.text(NO_NUL, max_size=50),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.decimals(allow_nan=False, allow_infinity=False, places=9),
        st.booleans(),
    ),
    max_size=10,
)


@FUZZ
@given(
    events=st.lists(
        st.fixed_dictionaries(
            {
                "customer_id": st.from_regex(r"[A-Za-z0-9._:@-]{1,30}", fullmatch=True),
                "event_name": st.text(NO_NUL, min_size=1, max_size=40),
                "metadata": valid_metadata,
            }
        ),
        min_size=1,
        max_size=20,
    )
)
async def test_every_accepted_event_reads_back_identically(
    running: Running, events: list[dict[str, Any]]
) -> None:
    for e in events:
        e["event_id"] = uuid.uuid4().hex
        e["timestamp"] = format_timestamp(now_ms() - 1000)
    async with running.session.post(
        f"{running.admin_url}/events/ingest", data=encode({"events": events}), headers=AUTH
    ) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["ingested_count"] == len(events)
    for sent in events:
        async with running.session.get(
            f"{running.admin_url}/events/{sent['event_id']}", headers=AUTH
        ) as r:
            stored = json.loads(await r.text(), parse_float=Decimal)
        expected = json.loads(encode(sent), parse_float=Decimal)
        assert {k: stored[k] for k in expected} == expected
