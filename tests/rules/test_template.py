"""Value templates and selectors: parsing at load, reading per exchange."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from billing.settings import MissingEnv
from rules.exchange import Exchange
from rules.jsonselect import Outcome, PathResult
from rules.selectors import NOTHING, Failed, Selector
from rules.template import compile_template


def exchange(**fields: Any) -> Exchange:
    headers = CIMultiDictProxy(CIMultiDict(fields.pop("headers", {})))
    x = Exchange(
        method=fields.pop("method", "POST"),
        path=fields.pop("path", "/v1/chat"),
        norm_path="/v1/chat",
        query_string=fields.pop("query", "a=1&a=2&b=%20x"),
        request_headers=headers,
        started_ms=1_000,
        customer_id="acme",
    )
    response_headers = fields.pop("response_headers", None)
    if response_headers is not None:
        x.response_headers = CIMultiDictProxy(CIMultiDict(response_headers))
    for key, value in fields.items():
        setattr(x, key, value)
    return x


ENV = {"REGION": "eu", "EMPTY": ""}


@pytest.mark.parametrize(
    ("template", "fields", "expected"),
    [
        (5, {}, 5),
        (True, {}, True),
        (Decimal("1.50"), {}, Decimal("1.50")),
        ("plain", {}, "plain"),
        ("${request.method}", {}, "POST"),
        ("${request.path}", {}, "/v1/chat"),
        ("${request.query.a}", {}, "1, 2"),
        ("${request.query.b}", {}, " x"),
        ("${request.header.X-Model}", {"headers": [("x-model", "m1")]}, "m1"),
        ("${request.header.x-multi}", {"headers": [("X-Multi", "a"), ("X-Multi", "b")]}, "a, b"),
        ("${response.status}", {"status": 201}, 201),
        ("${response.header.x-tokens}", {"response_headers": {"X-Tokens": "12"}}, "12"),
        ("${request.bytes}", {"request_bytes": 12}, 12),
        ("${response.bytes}", {"response_bytes": 99}, 99),
        ("${exchange.duration_ms}", {"duration_ms": 7}, 7),
        ("${exchange.aborted}", {"aborted": True}, True),
        ("${customer.id}", {}, "acme"),
        ("${env.REGION}", {}, "eu"),
        ("${env.EMPTY:-fallback}", {}, "fallback"),
        ("${env.UNSET:-x}", {}, "x"),
        ("$${request.method}", {}, "${request.method}"),
        ("${request.method} ${request.path}", {}, "POST /v1/chat"),
        ("n=${response.status}", {"status": 200}, "n=200"),
        ("${response.header.none:-7}", {"response_headers": {}}, 7),
        ("${response.header.none:-1.5}", {"response_headers": {}}, Decimal("1.5")),
        ("${response.header.none:-yes}", {"response_headers": {}}, "yes"),  # YAML 1.2
        ("${response.header.none:-true}", {"response_headers": {}}, True),
    ],
)
def test_render(template: Any, fields: dict[str, Any], expected: Any) -> None:
    value = compile_template(template, ENV).render(exchange(**fields), {})
    assert value == expected
    assert type(value) is type(expected)


def test_path_params_come_from_the_matching_rule() -> None:
    template = compile_template("${request.path_params.model}", ENV)
    assert template.render(exchange(), {"model": "gpt"}) == "gpt"


@pytest.mark.parametrize(
    ("outcome", "default", "expected"),
    [
        (PathResult(Outcome.FOUND, 5), None, 5),
        (PathResult(Outcome.MISSING), None, Failed("missing", defaultable=True)),
        (PathResult(Outcome.MISSING), "1", 1),
        (PathResult(Outcome.INCOMPLETE), "1", Failed("missing", defaultable=False)),
        (PathResult(Outcome.TOO_LARGE), "1", Failed("body_too_large")),
        (PathResult(Outcome.NOT_JSON), "1", Failed("not_json")),
        (PathResult(Outcome.ENCODING), None, Failed("encoding")),
    ],
)
def test_json_outcomes(outcome: PathResult, default: str | None, expected: Any) -> None:
    text = "${response.json.usage.n" + (f":-{default}}}" if default else "}")
    x = exchange(response_json={"usage.n": outcome})
    assert compile_template(text, ENV).render(x, {}) == expected


def test_a_missing_part_of_a_mixed_template_fails_the_whole_value() -> None:
    x = exchange(response_headers={})
    value = compile_template("m-${response.header.x-model}", ENV).render(x, {})
    assert value == Failed("missing", defaultable=True)


@pytest.mark.parametrize(
    "text",
    [
        "${request.nope}",
        "${response.header}",
        "${request.method",
        "a ${b ${c}",
        "${}",
        "${request.json}",
    ],
)
def test_bad_templates_are_load_errors(text: str) -> None:
    with pytest.raises(ValueError):
        compile_template(text, ENV)


def test_a_missing_environment_variable_is_named() -> None:
    with pytest.raises(MissingEnv, match="NOPE"):
        compile_template("${env.NOPE}", ENV)


def test_header_selectors_are_case_insensitive() -> None:
    assert Selector.parse("request.header.X-Customer-Id") == Selector(
        "request.header", "x-customer-id"
    )


def test_nothing_is_not_a_value() -> None:
    assert Selector.parse("response.status").read(exchange(), {}) is NOTHING


@pytest.mark.parametrize(
    ("first", "second", "default", "expected"),
    [
        (PathResult(Outcome.FOUND, 1), PathResult(Outcome.FOUND, 2), None, 1),
        (PathResult(Outcome.MISSING), PathResult(Outcome.FOUND, 2), None, 2),
        (PathResult(Outcome.MISSING), PathResult(Outcome.MISSING), "0", 0),
        (
            PathResult(Outcome.MISSING),
            PathResult(Outcome.MISSING),
            None,
            Failed("missing", defaultable=True),
        ),
        # an error on one path outranks "not there" on the other, and takes no default
        (PathResult(Outcome.NOT_JSON), PathResult(Outcome.MISSING), "0", Failed("not_json")),
        (
            PathResult(Outcome.INCOMPLETE),
            PathResult(Outcome.MISSING),
            "0",
            Failed("missing", defaultable=False),
        ),
    ],
)
def test_fallback_selectors_take_the_first_with_a_value(
    first: PathResult, second: PathResult, default: str | None, expected: Any
) -> None:
    text = "${response.json.a|response.json.b" + (f":-{default}}}" if default else "}")
    x = exchange(response_json={"a": first, "b": second})
    assert compile_template(text, ENV).render(x, {}) == expected


def test_fallback_selectors_mix_sources() -> None:
    template = compile_template("${request.header.x-model|request.query.model:-none}", ENV)
    assert template.render(exchange(query="model=q"), {}) == "q"
    assert template.render(exchange(query=""), {}) == "none"
    with_header = exchange(headers=[("X-Model", "h")], query="model=q")
    assert template.render(with_header, {}) == "h"
