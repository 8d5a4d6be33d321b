"""schemathesis against the running admin API, operation by operation, with the document
the server itself serves at /openapi.json: generated requests (admin token), valid and
invalid, never get a server error, and every answer has a documented status, content
type and body schema (error codes included: each error response lists its codes).

Generated path ids rarely exist, so a share of the cases uses the ids of a seeded account
and a known valid body: those reach the success paths the schemas must also describe.
The server runs in the test's event loop; schemathesis (blocking `requests`) in a thread.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from proxy.admin.operations import OPERATIONS
from tests.conftest import AUTH
from tests.proxy.admin_kit import CUSTOMER, Seeds, running_admin, seed

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# The same cases on every run unless more are asked for: explore locally with e.g.
# METERPROXY_SCHEMATHESIS_EXAMPLES=500 (random cases), keep CI reproducible.
EXAMPLES = int(os.environ.get("METERPROXY_SCHEMATHESIS_EXAMPLES", "30"))
DERANDOMIZE = "METERPROXY_SCHEMATHESIS_EXAMPLES" not in os.environ
VALID_BODIES: dict[str, Any] = {
    "POST /events/ingest": {"events": [
        {"event_id": "fuzz-1", "customer_id": CUSTOMER, "event_name": "api.call",
         "metadata": {"n": 2, "size": "big"}}]},
    "PUT /v1/customers/{customer_id}": {"plan": "basic"},
    "POST /v1/customers/{customer_id}/keys": {},
    "POST /v1/customers/{customer_id}/credits": {
        "grant_id": "fuzz", "meter": "api_calls", "credits": 3,
        "effective_at": "2026-01-01T00:00:00Z", "expires_at": "2026-06-01T00:00:00Z"},
    "POST /v1/customers/{customer_id}/adjustments": {
        "adjustment_id": "fuzz", "amount": "2.50", "description": "Setup fee"},
}


def strategies(operation: Any, seeds: Seeds) -> list[Any]:
    """Valid and invalid generated cases (the invalid ones must get a documented 4xx),
    plus valid cases on the seeded ids, and with a known valid body where there is one."""
    known = {"customer_id": seeds.customer, "event_id": seeds.event_id,
             "key_id": seeds.key_id, "statement_id": seeds.statement_id}
    ids = {name: value for name, value in known.items() if f"{{{name}}}" in operation.path}
    found = [operation.as_strategy(), operation.as_strategy(GenerationMode.NEGATIVE)]
    if ids:
        found.append(operation.as_strategy(path_parameters=ids))
    body = VALID_BODIES.get(operation.label)
    if body is not None:
        found.append(operation.as_strategy(path_parameters=ids or None, body=body))
    return found


def fuzz(operation: Any, base_url: str, seeds: Seeds) -> None:
    """Run the checks on EXAMPLES generated cases; raises on the first failure."""
    with requests.Session() as session:

        @given(case=st.one_of(strategies(operation, seeds)))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=DERANDOMIZE,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            case.call_and_validate(base_url=base_url, session=session, headers=AUTH,
                                   checks=CHECKS, timeout=10)

        run()


@pytest.mark.parametrize("label", [f"{op.method} {op.path}" for op in OPERATIONS])
async def test_every_operation_conforms_to_the_served_document(
    tmp_path: Path, unused_tcp_port: int, label: str
) -> None:
    async with running_admin(tmp_path, unused_tcp_port) as admin:
        seeds = await seed(admin)
        async with admin.session.get(admin.url + "/openapi.json") as r:
            document = await r.json()
        operation = schemathesis.openapi.from_dict(document).find_operation_by_label(label)
        assert operation is not None, label
        await asyncio.to_thread(fuzz, operation, admin.url, seeds)
