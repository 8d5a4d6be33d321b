"""Selectors: `${request.header.x-user}`-style references to parts of an exchange.

A selector is parsed once at load into a frozen `Selector` that knows its source and
argument; `read(exchange, params)` returns the value or `NOTHING`. JSON selectors
read their results from the exchange's body taps (see rules/jsonselect.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from rules.jsonselect import Outcome

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rules.exchange import Exchange


class _Nothing:
    """The selector found no value (absent, JSON null, or body cut short)."""

    def __repr__(self) -> str:
        return "NOTHING"


NOTHING: Final = _Nothing()


@dataclass(frozen=True, slots=True)
class Failed:
    """The selector could not read its value; `reason` is a rule-error reason."""

    reason: str
    defaultable: bool = False  # True when the body was parsed to its end (default applies)


MISSING_FAILURE = Failed("missing", defaultable=True)
# The body was cut short before the value was seen: no default, counted as missing.
INCOMPLETE_FAILURE = Failed("missing", defaultable=False)

# source -> (needs an argument, phase) ; phase: "request" values exist before forwarding
_SOURCES: dict[str, tuple[bool, str]] = {
    "request.method": (False, "request"),
    "request.path": (False, "request"),
    "request.query": (True, "request"),
    "request.header": (True, "request"),
    "request.path_params": (True, "request"),
    "request.bytes": (False, "end"),
    "request.json": (True, "end"),
    "response.status": (False, "response"),
    "response.header": (True, "response"),
    "response.bytes": (False, "end"),
    "response.json": (True, "end"),
    "exchange.duration_ms": (False, "end"),
    "exchange.aborted": (False, "end"),
    "customer.id": (False, "request"),
}


@dataclass(frozen=True, slots=True)
class Selector:
    source: str
    arg: str = ""

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse `request.header.NAME` etc.; ValueError names what is wrong."""
        for source, (needs_arg, _phase) in _SOURCES.items():
            if text == source and not needs_arg:
                return cls(source)
            if needs_arg and text.startswith(source + ".") and len(text) > len(source) + 1:
                arg = text[len(source) + 1 :]
                return cls(source, arg.lower() if source.endswith("header") else arg)
        raise ValueError(f"unknown selector {text!r}; known: {', '.join(_SOURCES)}")

    @property
    def phase(self) -> str:
        return _SOURCES[self.source][1]

    def __str__(self) -> str:
        return f"{self.source}.{self.arg}" if self.arg else self.source

    def read(self, x: Exchange, params: Mapping[str, str]) -> Any:
        """The value, NOTHING, or a Failed for JSON selectors that could not read."""
        return _READERS[self.source](self, x, params)


def _header(headers: Any, name: str) -> Any:
    if headers is None:
        return NOTHING
    values = headers.getall(name, None)
    if not values:
        return NOTHING
    return values[0] if len(values) == 1 else ", ".join(values)


def _query(x: Exchange, name: str) -> Any:
    values = x.query.getall(name, None)
    if not values:
        return NOTHING
    return values[0] if len(values) == 1 else ", ".join(values)


def _json(results: Mapping[str, Any] | None, path: str) -> Any:
    if results is None:  # no body was inspected: no value, and no default either
        return INCOMPLETE_FAILURE
    result = results.get(path)
    if result is None:
        return NOTHING
    outcome = result.outcome
    if outcome is Outcome.FOUND:
        return result.value
    if outcome is Outcome.MISSING:
        return MISSING_FAILURE
    if outcome is Outcome.INCOMPLETE:
        return INCOMPLETE_FAILURE
    return Failed(_JSON_REASONS[outcome])


_JSON_REASONS = {
    Outcome.TOO_LARGE: "body_too_large",
    Outcome.NOT_JSON: "not_json",
    Outcome.ENCODING: "encoding",
}

_READERS: dict[str, Any] = {
    "request.method": lambda s, x, p: x.method,
    "request.path": lambda s, x, p: x.path,
    "request.query": lambda s, x, p: _query(x, s.arg),
    "request.header": lambda s, x, p: _header(x.request_headers, s.arg),
    "request.path_params": lambda s, x, p: p.get(s.arg, NOTHING),
    "request.bytes": lambda s, x, p: x.request_bytes,
    "request.json": lambda s, x, p: _json(x.request_json, s.arg),
    "response.status": lambda s, x, p: NOTHING if x.status is None else x.status,
    "response.header": lambda s, x, p: _header(x.response_headers, s.arg),
    "response.bytes": lambda s, x, p: x.response_bytes,
    "response.json": lambda s, x, p: _json(x.response_json, s.arg),
    "exchange.duration_ms": lambda s, x, p: x.duration_ms,
    "exchange.aborted": lambda s, x, p: x.aborted,
    "customer.id": lambda s, x, p: NOTHING if x.customer_id is None else x.customer_id,
}
