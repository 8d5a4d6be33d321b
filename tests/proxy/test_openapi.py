"""The OpenAPI document: valid OpenAPI 3.1, served without a token, the same routes as the
router (no more, no fewer), and every error code it lists is one the server really answers
(and the other way round)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31

from proxy.admin.openapi import Operation, Param, document, json_reply
from proxy.admin.operations import OPERATIONS, openapi_document
from proxy.admin.routes import build_admin_app, build_metrics_app
from proxy.admin.system import healthz
from tests.conftest import AUTH
from tests.proxy.admin_kit import Seeds, running_admin, seed
from tests.proxy.test_billing_api import Admin


@pytest.fixture
async def admin(tmp_path: Path, unused_tcp_port: int) -> AsyncIterator[Admin]:
    async with running_admin(tmp_path, unused_tcp_port) as running:
        yield running


def schemas_in(node: Any) -> Iterator[Any]:
    """Every JSON Schema of the document: components and each `schema` of an operation."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "schema":
                yield value
            else:
                yield from schemas_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from schemas_in(value)


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi_document()
    errors = [str(e) for e in jsonschema_rs.validator_for(OPENAPI_31).iter_errors(doc)]
    assert errors == []
    found = [*doc["components"]["schemas"].values(), *schemas_in(doc["paths"])]
    assert len(found) > 100
    assert [s for s in found if not jsonschema_rs.meta.is_valid(s)] == []


async def test_it_is_served_without_a_token_and_matches_the_router(admin: Admin) -> None:
    async with admin.session.get(admin.url + "/openapi.json") as r:
        assert r.status == 200
        served = await r.json()
    assert served == openapi_document()
    documented = {(m.upper(), path) for path, ops in served["paths"].items() for m in ops}
    routed = {(r.method, r.resource.canonical) for r in build_admin_app(admin.mp).router.routes()
              if r.resource is not None}
    assert documented == routed
    assert len(documented) == len(OPERATIONS) == 23
    metrics = {(r.method, r.resource.canonical)
               for r in build_metrics_app(admin.mp).router.routes() if r.resource is not None}
    assert metrics == {("GET", "/healthz"), ("GET", "/metrics")}


def op(path: str, *params: Param) -> Operation:
    return Operation("GET", path, healthz, "s", "t", (json_reply(200, "ok", {}),),
                     params=params)


ID = Param("id", "path", {"type": "string"}, "an id")


@pytest.mark.parametrize(("operations", "problem"), [
    ([op("/x/{id}")], "path parameters"),
    ([op("/x", ID)], "path parameters"),
    ([op("/x/{id}", ID), op("/x/{id}", ID)], "described twice"),
])
def test_a_description_that_does_not_fit_its_route_is_refused(
    operations: list[Operation], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        document(operations, "0")


# ------------------------------------------------------------- error codes

BIG = {"events": [{"event_id": "x", "customer_id": "c", "event_name": "n",
                   "metadata": {"pad": "x" * 5_000_001}}]}
GRANT = {"grant_id": "welcome", "meter": "api_calls", "credits": "2.5"}
ADJUSTMENT = {"adjustment_id": "goodwill", "amount": "-1.005", "description": "Sorry"}
Row = tuple[str, str, Any, dict[str, str], int, str]
# (method, path, body, query, status, code); {key}/{statement} are the seeded ids.
ERRORS: list[Row] = [
    ("POST", "/events/ingest", {"events": []}, {}, 400, "invalid_events"),
    ("GET", "/events", None, {"start": "yesterday"}, 400, "invalid_request"),
    ("GET", "/events", None, {"meter_id": "nope"}, 404, "not_found"),
    ("GET", "/events/nope", None, {}, 404, "not_found"),
    ("GET", "/v1/meters", None, {"page_size": "0"}, 400, "invalid_request"),
    ("GET", "/v1/customers", None, {"page_number": "-1"}, 400, "invalid_request"),
    ("GET", "/v1/customers/a b", None, {}, 400, "invalid_request"),
    ("GET", "/v1/customers/nobody", None, {}, 404, "not_found"),
    ("PUT", "/v1/customers/acme", {"plan": 5}, {}, 400, "invalid_request"),
    ("PUT", "/v1/customers/acme", {"plan": "gold"}, {}, 400, "unknown_plan"),
    ("PUT", "/v1/customers/gone", {"plan": "basic"}, {}, 409, "customer_deleted"),
    ("DELETE", "/v1/customers/a b", None, {}, 400, "invalid_request"),
    ("DELETE", "/v1/customers/nobody", None, {}, 404, "not_found"),
    ("POST", "/v1/customers/acme/keys", {"key": "short"}, {}, 400, "invalid_request"),
    ("POST", "/v1/customers/gone/keys", None, {}, 409, "customer_deleted"),
    ("POST", "/v1/customers/acme/keys", {"key": "sk_imported_0123456789"}, {}, 409,
     "duplicate_key"),
    ("GET", "/v1/customers/acme/keys", None, {"page_size": "x"}, 400, "invalid_request"),
    ("GET", "/v1/customers/nobody/keys", None, {}, 404, "not_found"),
    ("DELETE", "/v1/customers/a b/keys/{key}", None, {}, 400, "invalid_request"),
    ("DELETE", "/v1/customers/acme/keys/nope", None, {}, 404, "not_found"),
    ("GET", "/v1/customers/acme/usage", None, {"at": "9999-12-31T00:00:00Z"}, 400,
     "invalid_request"),
    ("GET", "/v1/customers/nobody/usage", None, {}, 404, "not_found"),
    ("POST", "/v1/customers/acme/credits", {**GRANT, "credits": 0}, {}, 400, "invalid_request"),
    ("POST", "/v1/customers/acme/credits", {**GRANT, "meter": "nope"}, {}, 400,
     "unknown_meter"),
    ("POST", "/v1/customers/nobody/credits", GRANT, {}, 404, "not_found"),
    ("POST", "/v1/customers/acme/credits", {**GRANT, "credits": 3}, {}, 409, "conflict"),
    ("POST", "/v1/customers/gone/credits", GRANT, {}, 409, "customer_deleted"),
    ("GET", "/v1/customers/acme/credits", None, {"page_size": "101"}, 400, "invalid_request"),
    ("GET", "/v1/customers/nobody/credits", None, {}, 404, "not_found"),
    ("POST", "/v1/customers/acme/adjustments", {**ADJUSTMENT, "amount": "1e18"}, {}, 400,
     "invalid_request"),
    ("POST", "/v1/customers/nobody/adjustments", ADJUSTMENT, {}, 404, "not_found"),
    ("POST", "/v1/customers/acme/adjustments", {**ADJUSTMENT, "amount": 1}, {}, 409,
     "conflict"),
    ("GET", "/v1/customers/acme/adjustments", None, {"page_number": "x"}, 400,
     "invalid_request"),
    ("GET", "/v1/customers/nobody/adjustments", None, {}, 404, "not_found"),
    ("GET", "/v1/statements", None, {"status": "open"}, 400, "invalid_request"),
    ("GET", "/v1/statements/{statement}", None, {"format": "pdf"}, 400, "invalid_request"),
    ("GET", "/v1/statements/st_nothing", None, {}, 404, "not_found"),
    *[(o.method, o.path.replace("{customer_id}", "acme"), BIG, {}, 413, "request_too_large")
      for o in OPERATIONS if o.body is not None],
]
# Codes no request can provoke while the store works: the tmpfs tests of readiness and of a
# full disk (tests/reliability/test_store_full.py, test_admin_api.py) answer these, and a
# store refusing an event (test_admin_events.py) events_rejected.
NEEDS_A_FAILING_STORE = {"store_unavailable", "store_rejecting", "draining", "events_rejected"}


def documented_codes(doc: dict[str, Any], method: str, path: str) -> dict[int, set[str]]:
    responses = doc["paths"][path][method.lower()]["responses"]
    return {int(status): set(body["content"]["application/json"]["schema"]["properties"]
                             ["error"]["properties"]["code"]["enum"])
            for status, body in responses.items() if int(status) >= 400}


def template_of(method: str, path: str) -> str:
    """The documented path a concrete request path fills in."""
    for o in OPERATIONS:
        parts, concrete = o.path.split("/"), path.split("/")
        if o.method == method and len(parts) == len(concrete) and all(
            p.startswith("{") or p == c for p, c in zip(parts, concrete, strict=True)
        ):
            return o.path
    raise AssertionError(f"no operation for {method} {path}")


async def answer(admin: Admin, row: Row, seeds: Seeds) -> tuple[int, Any]:
    method, path, body, query, _, _ = row
    url = admin.url + path.format(key=seeds.key_id, statement=seeds.statement_id)
    async with admin.session.request(method, url, json=body, params=query, headers=AUTH) as r:
        return r.status, await r.json()


async def test_every_documented_error_code_is_answered_and_no_other(admin: Admin) -> None:
    seeds = await seed(admin)
    await admin.ok("POST", "/v1/customers/acme/keys", {"key": "sk_imported_0123456789"})
    await admin.ok("PUT", "/v1/customers/gone", {"plan": None})
    await admin.ok("DELETE", "/v1/customers/gone")
    doc = openapi_document()
    seen: set[tuple[str, str, int, str]] = set()
    for row in ERRORS:
        method, path, _, _, status, code = row
        got, body = await answer(admin, row, seeds)
        assert (got, body["error"]["code"]) == (status, code), row
        assert isinstance(body["error"]["message"], str)
        template = template_of(method, path)
        assert code in documented_codes(doc, method, template).get(status, set()), row
        seen.add((method, template, status, code))
    everything = {(o.method, o.path, status, code)
                  for o in OPERATIONS for status, codes in o.all_errors().items()
                  for code in codes}
    unprovoked = {e for e in everything - seen if e[3] not in NEEDS_A_FAILING_STORE}
    assert unprovoked == {(o.method, o.path, 401, "unauthorized")
                          for o in OPERATIONS if o.auth != "none"}  # test_admin_contract.py
