"""Compiled rules: frozen values built once at load; the request path only looks up."""

from __future__ import annotations

from dataclasses import dataclass

from rules.paths import PathGlob
from rules.template import Template

STATUS_NONE = 0  # the status of an exchange aborted before the upstream answered


@dataclass(frozen=True, slots=True)
class StatusMatch:
    """Which response statuses a rule counts; `any` also matches an aborted exchange."""

    ranges: tuple[tuple[int, int], ...]
    any: bool = False

    @classmethod
    def parse(cls, value: object) -> StatusMatch:
        """Parse "2xx", "any", "200-499", 200 or a list of those; ValueError if not."""
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty status list matches nothing")
            parsed = [cls.parse(v) for v in value]
            if any(p.any for p in parsed):
                return cls((), any=True)
            return cls(tuple(r for p in parsed for r in p.ranges))
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"expected a status such as 2xx, 200-499, 201 or any, got {value!r}")
        text = str(value).strip().lower()
        if text == "any":
            return cls((), any=True)
        if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
            low = int(text[0]) * 100
            extra = ((101, 101),) if low == 200 else ()  # a WebSocket upgrade is a success
            return cls(((low, low + 99), *extra))
        low_text, dash, high_text = text.partition("-")
        try:
            low, high = int(low_text), int(high_text if dash else low_text)
        except ValueError:
            raise ValueError(
                f"expected a status such as 2xx, 200-499, 201 or any, got {value!r}"
            ) from None
        if not 100 <= low <= high <= 599:
            raise ValueError(f"status range {value!r} must lie within 100-599")
        return cls(((low, high),))

    def matches(self, status: int | None) -> bool:
        if self.any:
            return True
        if status is None:
            return False
        # A loop, not any(...), whose generator costs more than the test: every exchange.
        for low, high in self.ranges:  # noqa: SIM110
            if low <= status <= high:
                return True
        return False


DEFAULT_STATUS = StatusMatch.parse("2xx")


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    methods: frozenset[str] | None  # None: every method
    path: PathGlob
    status: StatusMatch
    event_name: str
    metadata: tuple[tuple[str, Template], ...]

    def json_paths(self, source: str) -> set[str]:
        """The JSON paths this rule reads from `request.json` or `response.json`."""
        return {
            selector.arg
            for _, template in self.metadata
            for ref in template.refs
            for selector in ref.selectors
            if selector.source == source
        }
