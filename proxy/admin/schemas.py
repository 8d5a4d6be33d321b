"""JSON Schemas (2020-12, as OpenAPI 3.1 uses them) of what the admin API reads and writes.

They describe the wire exactly, so the schemathesis test can hold the server to them:
event metadata numbers are JSON numbers (exact decimals on the wire), statement money
and quantities are decimal strings, instants are ISO-8601 strings.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"
DECIMAL_TEXT = r"^-?[0-9]+(\.[0-9]+)?$"  # plain notation, as statements write it


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """An object with these properties; the `required` ones always present."""
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }


def items_of(schema: Schema) -> Schema:
    return obj({"items": {"type": "array", "items": schema}})


def error_schema(codes: tuple[str, ...]) -> Schema:
    """The error shape with `code` restricted to the codes a response may carry."""
    error = obj({"code": {"type": "string", "enum": list(codes)}, "message": STRING},
                {"details": {"type": "array", "items": ISSUE}})
    return obj({"error": error})


STRING: Schema = {"type": "string"}
INSTANT: Schema = {"type": "string", "format": "date-time"}
DECIMAL_STRING: Schema = {"type": "string", "pattern": DECIMAL_TEXT}
DECIMAL_INPUT: Schema = {
    "description": "An exact decimal: a JSON number or a string such as \"-12.50\".",
    "anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"}],
}
CUSTOMER_ID: Schema = {"type": "string", "pattern": CUSTOMER_ID_PATTERN}
ISSUE: Schema = obj({"field": STRING, "message": STRING},
                   {"index": {"type": "integer", "minimum": 0}})  # no index: the whole body
METADATA_VALUE: Schema = {"anyOf": [{"type": "string", "maxLength": 500}, {"type": "number"},
                                    {"type": "boolean"}]}

_NAME: Schema = {"type": "string", "minLength": 1, "maxLength": 256}
_EVENT_IN = obj(
    {"event_id": {**_NAME, "pattern": "^[^\\u0000]*$", "not": {"pattern": "^mp_"}},
     "customer_id": CUSTOMER_ID,
     "event_name": _NAME},
    {"timestamp": nullable(INSTANT),
     "metadata": nullable({"type": "object", "maxProperties": 50,
                           "propertyNames": {"maxLength": 100},
                           "additionalProperties": METADATA_VALUE})},
)
_EVENT = obj({"business_id": STRING, "customer_id": STRING, "event_id": STRING,
              "event_name": STRING, "timestamp": INSTANT,
              "metadata": {"type": "object", "additionalProperties": METADATA_VALUE}})
_METER = obj({
    "name": STRING,
    "event_name": STRING,
    "aggregation": obj({"type": {"enum": ["count", "sum", "max", "last"]},
                        "key": nullable(STRING)}),
    "filter": nullable({"type": "object"}),
    "measurement_unit": nullable(STRING),
})
_CUSTOMER = obj({
    "customer_id": STRING,
    "plan": nullable(STRING),
    "pending_plan": nullable(STRING),
    "pending_from": nullable(INSTANT),
    "created_at": INSTANT,
    "deleted_at": nullable(INSTANT),
})
_KEY = obj({"key_id": STRING, "prefix": STRING, "created_at": INSTANT,
            "revoked_at": nullable(INSTANT)})
_GRANT = obj({
    "grant_id": STRING, "meter": STRING, "credits": {"type": "number"},
    "burned": {"type": "number"}, "remaining": {"type": "number"},
    "effective_at": INSTANT, "expires_at": nullable(INSTANT), "expired": {"type": "boolean"},
    "created_at": INSTANT,
})
_ADJUSTMENT = obj({"adjustment_id": STRING, "amount": {"type": "number"},
                   "description": STRING, "created_at": INSTANT,
                   "statement_id": nullable(STRING)})
_LINE = obj({
    "type": {"enum": ["usage", "fixed", "adjustment", "manual"]},
    "description": STRING,
    "meter": nullable(STRING),
    "period_start": nullable(INSTANT),
    "period_end": nullable(INSTANT),
    **{name: nullable(DECIMAL_STRING) for name in (
        "quantity", "unit_size", "free_units", "credits_applied", "credits_remaining",
        "billable_units", "unit_price")},
    "amount": DECIMAL_STRING,
})
_STATEMENT_FIELDS: dict[str, Schema] = {
    "id": {"type": "string", "pattern": "^st_[a-z2-7]{26}$"},
    "customer_id": STRING,
    "plan": STRING,
    "currency": STRING,
    "period_start": INSTANT,
    "period_end": INSTANT,
    "cutoff": INSTANT,
    "lines": {"type": "array", "items": ref("StatementLine")},
    "subtotal": DECIMAL_STRING,
    "total": DECIMAL_STRING,
    "total_minor": {"type": "integer"},
}

COMPONENTS: dict[str, Schema] = {
    "Event": _EVENT,
    "EventInput": _EVENT_IN,
    "IngestRequest": obj({"events": {"type": "array", "minItems": 1, "maxItems": 1000,
                                     "items": ref("EventInput")}}),
    "Meter": _METER,
    "Customer": _CUSTOMER,
    "Key": _KEY,
    "Grant": _GRANT,
    "Adjustment": _ADJUSTMENT,
    "StatementLine": _LINE,
    "Statement": obj({**_STATEMENT_FIELDS, "status": {"enum": ["draft", "final"]},
                      "finalized_at": nullable(INSTANT)}),
    "Preview": obj({"at": INSTANT, **_STATEMENT_FIELDS,
                    "status": {"enum": ["open", "draft", "final"]}}),
}
