"""Rule matching (method, path, status) and customer identification."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from rules.exchange import Exchange
from rules.identify import (
    ApiKeySource,
    CustomersConfig,
    KeyRing,
    SelectorSource,
    Verdict,
    hash_key,
    identify_request,
    identify_response,
    valid_customer_id,
)
from rules.model import Rule, StatusMatch
from rules.paths import PathGlob
from rules.ruleset import RuleSet
from rules.selectors import Selector
from rules.template import compile_template


@pytest.mark.parametrize(
    ("spec", "matches", "misses"),
    [
        ("2xx", [200, 204, 299, 101], [199, 300, 404, None]),
        ("any", [100, 200, 500, None], []),
        ("200-499", [200, 302, 499], [199, 500, None]),
        (201, [201], [200, 202]),
        ([200, "5xx"], [200, 500, 599], [201, 404]),
        (["404", "any"], [None, 200], []),
        ("4XX", [400, 451], [500]),
    ],
)
def test_status_match(spec: Any, matches: list[int | None], misses: list[int | None]) -> None:
    status = StatusMatch.parse(spec)
    assert all(status.matches(s) for s in matches)
    assert not any(status.matches(s) for s in misses)


@pytest.mark.parametrize("spec", ["6xx", "x", "500-200", "99-200", [], True, 3.5, "2xx-3xx"])
def test_bad_status_specs(spec: Any) -> None:
    with pytest.raises(ValueError):
        StatusMatch.parse(spec)


def rule(
    name: str,
    path: str,
    methods: set[str] | None = None,
    status: Any = "2xx",
    metadata: dict[str, Any] | None = None,
) -> Rule:
    return Rule(
        name,
        frozenset(methods) if methods else None,
        PathGlob.compile(path),
        StatusMatch.parse(status),
        f"{name}.event",
        tuple((k, compile_template(v, {})) for k, v in (metadata or {}).items()),
    )


def exchange(method: str = "GET", path: str = "/v1/models/gpt-4/chat") -> Exchange:
    return Exchange(
        method, path, path, "", CIMultiDictProxy(CIMultiDict()), 5_000, customer_id="acme"
    )


RULES = RuleSet(
    (
        rule("all", "/**", status="any", metadata={"b": "${response.bytes}"}),
        rule(
            "models",
            "/v1/models/{model}/chat",
            {"POST"},
            metadata={
                "model": "${request.path_params.model}",
                "n": "${request.json.n:-1}",
                "tokens": "${response.json.usage.total}",
            },
        ),
        rule("v2", "/v2/**"),
    )
)


def test_candidates_match_method_and_path_with_captures() -> None:
    assert RULES.candidates("POST", "/v1/models/gpt-4/chat") == [(0, {}), (1, {"model": "gpt-4"})]
    assert RULES.candidates("GET", "/v1/models/gpt-4/chat") == [(0, {})]
    assert RULES.candidates("GET", "/v2") == [(0, {}), (2, {})]


def test_json_paths_are_collected_once_per_direction() -> None:
    assert RULES.request_json is not None and RULES.request_json.paths == ("n",)
    assert RULES.response_json is not None and RULES.response_json.paths == ("usage.total",)
    cands = RULES.candidates("POST", "/v1/models/gpt-4/chat")
    assert RULES.needs_request_json(cands) and RULES.needs_response_json(cands)
    assert not RULES.needs_response_json(RULES.candidates("GET", "/v2/x"))


def test_events_one_per_matching_rule_and_errors_counted() -> None:
    x = exchange("POST")
    x.candidates = RULES.candidates("POST", x.norm_path)
    x.status, x.response_bytes = 200, 42
    errors: list[tuple[str, str, str]] = []
    ids = iter(["mp_1", "mp_2"])
    events = RULES.events(x, lambda *e: errors.append(e), new_id=lambda: next(ids))
    assert [(e.event_id, e.event_name, dict(e.metadata)) for e in events] == [
        ("mp_1", "all.event", {"b": 42}),
        ("mp_2", "models.event", {"model": "gpt-4"}),
    ]
    assert all(e.timestamp_ms == 5_000 and e.source == "proxy" for e in events)
    # n: no body was parsed, no default applies; tokens: nothing read -> both counted missing
    assert sorted(errors) == [("models", "missing", "n"), ("models", "missing", "tokens")]


def test_an_aborted_exchange_before_a_status_matches_only_any() -> None:
    x = exchange("POST")
    x.candidates = RULES.candidates("POST", x.norm_path)
    x.aborted = True
    assert [r.name for r, _ in RULES.matched(x)] == ["all"]


def test_a_rule_that_raises_loses_one_key_and_the_exchange_goes_on() -> None:
    broken = RuleSet(
        (rule("r", "/**", metadata={"ok": "${request.method}", "bad": "${response.header.x}"}),)
    )
    x = exchange()
    x.candidates = broken.candidates("GET", x.norm_path)
    x.status = 200
    x.response_headers = object()  # type: ignore[assignment]  # makes the selector raise
    errors: list[tuple[str, str, str]] = []
    [event] = broken.events(x, lambda *e: errors.append(e))
    assert dict(event.metadata) == {"ok": "GET"}
    assert errors == [("r", "error", "bad")]


# ----------------------------------------------------------------- identification

KEY = "mpk_secret_value_1234567890"
RING = KeyRing({hash_key(KEY): ("globex", "key_1")})
CONFIG = CustomersConfig(
    (
        ApiKeySource("authorization", "bearer"),
        SelectorSource(Selector.parse("request.header.x-customer-id")),
        SelectorSource(Selector.parse("request.query.customer")),
    ),
    "reject",
    (),
)


def headers(**h: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in h.items()}))


@pytest.mark.parametrize(
    ("hdrs", "query", "trusted", "expected"),
    [
        (headers(Authorization=f"Bearer {KEY}"), {}, True, (Verdict.FOUND, "globex")),
        (headers(Authorization=f"bearer  {KEY} "), {}, True, (Verdict.FOUND, "globex")),
        # a presented but unknown key never falls through to the header
        (
            headers(Authorization="Bearer nope", X_Customer_Id="acme"),
            {},
            True,
            (Verdict.BAD_KEY, None),
        ),
        # another scheme is not a key: fall through
        (
            headers(Authorization="Basic eDp5", X_Customer_Id="acme"),
            {},
            True,
            (Verdict.FOUND, "acme"),
        ),
        (headers(X_Customer_Id="acme"), {}, True, (Verdict.FOUND, "acme")),
        # identity headers count only from trusted peers
        (headers(X_Customer_Id="acme"), {}, False, (Verdict.UNKNOWN, None)),
        (headers(X_Customer_Id="bad id"), {"customer": "c2"}, True, (Verdict.FOUND, "c2")),
        (headers(), {}, True, (Verdict.UNKNOWN, None)),
    ],
)
def test_identify_request(
    hdrs: Any, query: dict[str, str], trusted: bool, expected: tuple[Verdict, str | None]
) -> None:
    assert identify_request(CONFIG, hdrs, lambda: query, trusted, RING) == expected


def test_identify_response() -> None:
    config = CustomersConfig(
        (SelectorSource(Selector.parse("response.header.x-billing")),), "pass", ()
    )
    assert identify_response(config, headers(X_Billing="acme")) == "acme"
    assert identify_response(config, headers(X_Billing="no way")) is None
    assert identify_response(config, None) is None


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("acme", True),
        ("a.b_c:d@e-f", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("a b", False),
        ("ü", False),
        (5, False),
        (None, False),
    ],
)
def test_customer_ids(value: Any, ok: bool) -> None:
    assert valid_customer_id(value) is ok


def test_keys_are_kept_only_as_hashes() -> None:
    assert len(RING) == 1
    assert KEY.encode() not in repr(vars(RING)).encode()
    assert RING.customer_for(KEY) == "globex"
    assert RING.customer_for(KEY + "x") is None


def test_a_value_holding_nul_is_left_out_and_counted() -> None:
    from rules.jsonselect import Outcome, PathResult

    rules = RuleSet((rule("r", "/**", metadata={"model": "${response.json.model}"}),))
    x = exchange()
    x.candidates = rules.candidates("GET", x.norm_path)
    x.status = 200
    x.response_json = {"model": PathResult(Outcome.FOUND, "gpt\x00")}
    errors: list[tuple[str, str, str]] = []
    [event] = rules.events(x, lambda *e: errors.append(e))
    assert dict(event.metadata) == {}
    assert errors == [("r", "error", "model")]
