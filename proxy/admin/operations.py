"""Every route of the admin listener, once: `routes.py` registers these and
`/openapi.json` renders them, so the two cannot differ."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy.admin import billing, customers, events, system
from proxy.admin.jsonout import json_response
from proxy.admin.openapi import Operation, Param, Reply, document, json_reply
from proxy.admin.params import MAX_PAGE_NUMBER, MAX_PAGE_SIZE
from proxy.admin.schemas import (
    CUSTOMER_ID,
    DECIMAL_INPUT,
    INSTANT,
    STRING,
    Schema,
    items_of,
    nullable,
    obj,
    ref,
)
from proxy.version import __version__

if TYPE_CHECKING:
    from proxy.admin.context import AdminContext

# ------------------------------------------------------------------ parameters

CUSTOMER = Param("customer_id", "path", CUSTOMER_ID,
                 "1-128 characters of A-Z a-z 0-9 . _ : @ -")
PAGE = (
    Param("page_size", "query",
          {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": 10},
          "items per page"),
    Param("page_number", "query",
          {"type": "integer", "minimum": 0, "maximum": MAX_PAGE_NUMBER, "default": 0},
          "the page, from 0"),
)


def when(name: str, description: str) -> Param:
    return Param(name, "query", INSTANT, description + " (ISO-8601, 1970 to 9999)")


# --------------------------------------------------------------------- answers

STORE = {503: ("store_unavailable",)}
BAD = {400: ("invalid_request",)}
MISSING = {404: ("not_found",)}
TOO_LARGE = {413: ("request_too_large",)}
CUSTOMER_REPLY = json_reply(200, "the customer", ref("Customer"))
IDENTIFIER: Schema = {"type": "string", "minLength": 1, "maxLength": 128}


async def openapi_json(request: web.Request, mp: AdminContext) -> web.Response:
    """This document: OpenAPI 3.1 of every route of the admin listener."""
    return json_response(openapi_document())


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of OPERATIONS (built once; callers must not change it)."""
    return document(OPERATIONS, __version__)


_SYSTEM = (
    Operation("GET", "/healthz", system.healthz, "Liveness: the store is open", "system",
              (json_reply(200, "alive", obj({"status": {"const": "ok"}})),),
              auth="none", on_metrics_listener=True),
    Operation("GET", "/readyz", system.readyz, "Readiness: 503 while draining or while the "
              "store rejects writes", "system",
              (json_reply(200, "ready", obj({"status": {"const": "ready"}})),),
              {503: ("draining", "store_rejecting")}, auth="none"),
    Operation("GET", "/metrics", system.metrics, "Prometheus metrics", "system",
              (Reply(200, "the metrics", {"text/plain": STRING,
                                          "application/openmetrics-text": STRING}),),
              auth="none", on_metrics_listener=True),
    Operation("GET", "/openapi.json", openapi_json, "This document", "system",
              (json_reply(200, "OpenAPI 3.1", {"type": "object"}),), auth="none"),
)

_EVENTS = (
    Operation("POST", "/events/ingest", events.ingest,
              "Ingest 1-1000 usage events (Dodo Payments wire format); 200 once durable",
              "events", (json_reply(200, "events newly stored (seen ids are not counted)",
                                    obj({"ingested_count": {"type": "integer",
                                                            "minimum": 0}})),),
              {400: ("invalid_events",), 422: ("events_rejected",), **TOO_LARGE, **STORE},
              auth="ingest",
              body=ref("IngestRequest")),
    Operation("GET", "/events", events.list_events, "Events, newest first, in [start, end)",
              "events", (json_reply(200, "a page of events", items_of(ref("Event"))),),
              {**BAD, **MISSING, **STORE},
              params=(Param("customer_id", "query", STRING, "only this customer"),
                      Param("event_name", "query", STRING, "only this event name"),
                      Param("meter_id", "query", STRING,
                            "only events this meter counts (a meter name; 404 if none)"),
                      when("start", "from this instant, inclusive"),
                      when("end", "to this instant, exclusive"), *PAGE)),
    Operation("GET", "/events/{event_id}", events.get_event, "One event", "events",
              (json_reply(200, "the event", ref("Event")),), {**MISSING, **STORE},
              params=(Param("event_id", "path", {"type": "string", "minLength": 1,
                                                 "maxLength": 256}, "the event id"),)),
)

_CUSTOMERS = (
    Operation("GET", "/v1/meters", billing.list_meters, "The configured meters", "meters",
              (json_reply(200, "a page of meters", items_of(ref("Meter"))),), BAD,
              params=PAGE),
    Operation("GET", "/v1/customers", customers.list_customers, "Customers, by id",
              "customers", (json_reply(200, "a page of customers", items_of(ref("Customer"))),),
              {**BAD, **STORE}, params=PAGE),
    Operation("GET", "/v1/customers/{customer_id}", customers.get_customer, "One customer",
              "customers", (CUSTOMER_REPLY,), {**BAD, **MISSING, **STORE}, params=(CUSTOMER,)),
    Operation("PUT", "/v1/customers/{customer_id}", customers.put_customer,
              "Create a customer or assign its plan (null: the default plan) from the end "
              "of its current period", "customers", (CUSTOMER_REPLY,),
              {400: ("invalid_request", "unknown_plan"), 409: ("customer_deleted",),
               **TOO_LARGE, **STORE},
              params=(CUSTOMER,), body=obj({}, {"plan": nullable({"type": "string"})})),
    Operation("DELETE", "/v1/customers/{customer_id}", customers.delete_customer,
              "Revoke its keys and end its current period now; later events are stored, "
              "not billed", "customers", (CUSTOMER_REPLY,), {**BAD, **MISSING, **STORE},
              params=(CUSTOMER,)),
    Operation("POST", "/v1/customers/{customer_id}/keys", customers.create_key,
              "Issue an API key, or import an existing secret; the key is shown once",
              "keys", (json_reply(201, "the key (only its hash is stored)",
                                  obj({"key_id": STRING, "key": STRING,
                                       "created_at": INSTANT})),),
              {**BAD, 409: ("customer_deleted", "duplicate_key"), **TOO_LARGE, **STORE},
              params=(CUSTOMER,), body_required=False,
              body=obj({}, {"key": {"type": "string", "pattern": "^[!-~]{16,256}$"}})),
    Operation("GET", "/v1/customers/{customer_id}/keys", customers.list_keys,
              "The customer's keys: ids and first 8 characters", "keys",
              (json_reply(200, "a page of keys", items_of(ref("Key"))),),
              {**BAD, **MISSING, **STORE}, params=(CUSTOMER, *PAGE)),
    Operation("DELETE", "/v1/customers/{customer_id}/keys/{key_id}", customers.revoke_key,
              "Revoke a key, at once on this instance", "keys",
              (json_reply(200, "revoked", obj({"key_id": STRING, "revoked": {"const": True}})),),
              {**BAD, **MISSING, **STORE},
              params=(CUSTOMER, Param("key_id", "path", STRING, "the key's id"))),
)

_BILLING = (
    Operation("GET", "/v1/customers/{customer_id}/usage", billing.usage,
              "Preview of the period containing `at` (default now)", "billing",
              (json_reply(200, "the period's statement as it stands", ref("Preview")),),
              {**BAD, **MISSING, **STORE},
              params=(CUSTOMER, when("at", "the instant whose period to preview"))),
    Operation("POST", "/v1/customers/{customer_id}/credits", billing.grant_credits,
              "Grant credits; a retry with the same grant_id returns the first grant",
              "credits", (json_reply(201, "granted", ref("Grant")),
                          json_reply(200, "granted before, with this grant_id", ref("Grant"))),
              {400: ("invalid_request", "unknown_meter"), **MISSING,
               409: ("conflict", "customer_deleted"), **TOO_LARGE, **STORE},
              params=(CUSTOMER,),
              body=obj({"grant_id": IDENTIFIER, "meter": STRING, "credits": DECIMAL_INPUT},
                       {"effective_at": nullable(INSTANT), "expires_at": nullable(INSTANT)})),
    Operation("GET", "/v1/customers/{customer_id}/credits", billing.list_credits,
              "Grants with what statements burned and what remains", "credits",
              (json_reply(200, "a page of grants", items_of(ref("Grant"))),),
              {**BAD, **MISSING, **STORE}, params=(CUSTOMER, *PAGE)),
    Operation("POST", "/v1/customers/{customer_id}/adjustments", billing.add_adjustment,
              "A manual line (either sign) on the next statement; idempotent by "
              "adjustment_id", "adjustments",
              (json_reply(201, "added", ref("Adjustment")),
               json_reply(200, "added before, with this adjustment_id", ref("Adjustment"))),
              {**BAD, **MISSING, 409: ("conflict",), **TOO_LARGE, **STORE},
              params=(CUSTOMER,),
              body=obj({"adjustment_id": IDENTIFIER, "amount": DECIMAL_INPUT,
                        "description": {"type": "string", "minLength": 1,
                                        "maxLength": 500}})),
    Operation("GET", "/v1/customers/{customer_id}/adjustments", billing.list_adjustments,
              "Manual adjustments and the statement each landed on", "adjustments",
              (json_reply(200, "a page of adjustments", items_of(ref("Adjustment"))),),
              {**BAD, **MISSING, **STORE}, params=(CUSTOMER, *PAGE)),
    Operation("GET", "/v1/statements", billing.list_statements,
              "Statements: final ones by finalisation (for exporters), then drafts",
              "statements", (json_reply(200, "a page of statements", items_of(ref("Statement"))),),
              {**BAD, **STORE},
              params=(Param("customer_id", "query", STRING, "only this customer"),
                      Param("status", "query", {"enum": ["draft", "final"]}, "only this status"),
                      when("finalized_after", "only statements finalised after this"),
                      *PAGE)),
    Operation("GET", "/v1/statements/{statement_id}", billing.get_statement,
              "One statement as JSON, CSV lines or a printable HTML page", "statements",
              (Reply(200, "the statement", {"application/json": ref("Statement"),
                                            "text/csv": STRING, "text/html": STRING}),),
              {**BAD, **MISSING, **STORE},
              params=(Param("statement_id", "path", STRING, "st_ and 26 base32 characters"),
                      Param("format", "query", {"enum": list(billing.FORMATS)},
                            "json (default), csv or html"))),
    Operation("POST", "/v1/billing/run", billing.run_billing,
              "Draft every ended period and finalise those past grace, now (idempotent)",
              "billing", (json_reply(200, "statements created and finalised",
                                     obj({"drafted": {"type": "integer", "minimum": 0},
                                          "finalized": {"type": "integer", "minimum": 0}})),),
              STORE),
)

OPERATIONS: tuple[Operation, ...] = (*_SYSTEM, *_EVENTS, *_CUSTOMERS, *_BILLING)
