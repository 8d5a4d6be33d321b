"""Parse the `rules` and `customers` sections into compiled, frozen values."""

from __future__ import annotations

from typing import Any

from billing.settings import MissingEnv, Section, type_name
from rules.identify import ApiKeySource, CustomersConfig, SelectorSource, Source
from rules.model import DEFAULT_STATUS, Rule, StatusMatch
from rules.paths import PathGlob
from rules.ruleset import RuleSet
from rules.selectors import Selector
from rules.template import Template, compile_template

MAX_METADATA_KEYS = 50
MAX_KEY_CHARS = 100
_METHOD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ-")


def parse_rules(root: Section, inspect_body_limit: int) -> RuleSet:
    rules = []
    names: set[str] = set()
    for section in root.sections("rules"):
        rule = _parse_rule(section)
        if rule is None:
            continue
        if rule.name in names:
            section.fail("name", f"duplicate rule name {rule.name!r}")
        names.add(rule.name)
        rules.append(rule)
    return RuleSet(tuple(rules), inspect_body_limit)


def _parse_rule(s: Section) -> Rule | None:
    name = s.text("name")
    event_name = s.text("event_name")
    match = s.section("match", required=True)
    methods = _methods(match)
    path = _glob(match, "path", default="/**")
    status = _status(match)
    match.done()
    metadata = _metadata(s)
    s.done()
    if path is None:
        return None
    if name and not (1 <= len(name) <= 100):
        s.fail("name", "must be 1-100 characters")
    if event_name is not None and not event_name:
        s.fail("event_name", "must not be empty")
    return Rule(name, methods, path, status, event_name, metadata)


def _methods(match: Section) -> frozenset[str] | None:
    value = match.raw("method")
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    out = set()
    for v in values:
        if not isinstance(v, str) or not v or not set(v.upper()) <= _METHOD_CHARS:
            match.fail("method", f"expected an HTTP method such as GET or POST, got {v!r}")
            continue
        out.add(v.upper())
    return frozenset(out) or None


def _glob(s: Section, key: str, default: str | None = None) -> PathGlob | None:
    pattern = s.text(key, default)
    if pattern is None:
        return None
    try:
        return PathGlob.compile(pattern)
    except ValueError as exc:
        s.fail(key, str(exc))
        return None


def _status(match: Section) -> StatusMatch:
    value = match.raw("status")
    if value is None:
        return DEFAULT_STATUS
    try:
        return StatusMatch.parse(value)
    except ValueError as exc:
        match.fail("status", str(exc))
        return DEFAULT_STATUS


def _metadata(s: Section) -> tuple[tuple[str, Template], ...]:
    data = s.raw("metadata")
    path = s.key_path("metadata")
    if data is None:
        return ()
    if not isinstance(data, dict):
        s.problems.add(path, f"must be a mapping, got {type_name(data)}")
        return ()
    if len(data) > MAX_METADATA_KEYS:
        s.problems.add(path, f"at most {MAX_METADATA_KEYS} keys, got {len(data)}")
    out = []
    for key, value in data.items():
        if len(key) > MAX_KEY_CHARS:
            s.problems.add(f"{path}.{key}", f"key longer than {MAX_KEY_CHARS} characters")
        template = _template(s, f"{path}.{key}", value)
        if template is not None:
            out.append((key, template))
    return tuple(out)


def _template(s: Section, path: str, value: Any) -> Template | None:
    try:
        return compile_template(value, s.environ)
    except (ValueError, MissingEnv) as exc:
        s.problems.add(path, str(exc))
        return None


# ------------------------------------------------------------------- customers


def parse_customers(root: Section) -> CustomersConfig:
    s = root.section("customers")
    unidentified = s.choice("unidentified", ("reject", "pass"), "reject")
    sources = tuple(
        src
        for path, item in s.items("identify")
        if (src := _source(s, path, item, unidentified)) is not None
    )
    public = tuple(
        glob
        for i, pattern in enumerate(s.str_list("public_paths"))
        if (glob := _public_glob(s, i, pattern)) is not None
    )
    s.done()
    return CustomersConfig(sources, unidentified, public)


def _source(s: Section, path: str, item: Any, unidentified: str) -> Source | None:
    if isinstance(item, dict) and "api_key" in item:
        key = Section(item, path, s.problems, s.environ)
        spec = key.section("api_key")
        header = spec.text("header", "Authorization").lower()
        scheme = spec.text("scheme", None)
        spec.done()
        key.done()
        return ApiKeySource(header, scheme.lower() if scheme else None)
    if not isinstance(item, str):
        s.problems.add(path, "expected `api_key: {header, scheme}` or a selector like ${...}")
        return None
    text = item.strip()
    if not (text.startswith("${") and text.endswith("}")) or text.count("${") != 1:
        s.problems.add(
            path, f"expected one selector such as ${{request.header.x-customer-id}}, got {item!r}"
        )
        return None
    try:
        selector = Selector.parse(text[2:-1].strip())
    except ValueError as exc:
        s.problems.add(path, str(exc))
        return None
    if selector.source not in ("request.header", "request.query", "response.header"):
        s.problems.add(
            path, "customer sources are request.header.*, request.query.* or response.header.*"
        )
        return None
    if selector.phase != "request" and unidentified != "pass":
        s.problems.add(path, "response-time sources (response.*) need `unidentified: pass`")
    return SelectorSource(selector)


def _public_glob(s: Section, index: int, pattern: str) -> PathGlob | None:
    try:
        return PathGlob.compile(pattern)
    except ValueError as exc:
        s.problems.add(f"{s.key_path('public_paths')}[{index}]", str(exc))
        return None
