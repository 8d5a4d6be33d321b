"""Value templates: a YAML value that may reference selectors and environment variables.

`${env.NAME}` / `${env.NAME:-default}` are resolved when the config loads; `$${` is a
literal `${`; `${selector}` and `${selector:-default}` are read from each exchange, and
`${a|b:-default}` takes the first of several selectors that has a value (e.g. usage at
one JSON path in a streamed response and another in a plain one).
A template that is exactly one selector keeps the selector's type (an int stays an
int); text around selectors makes a string. Defaults are read as YAML scalars.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from billing.settings import MissingEnv, scalar_value
from rules.selectors import MISSING_FAILURE, NOTHING, Failed, Selector

if TYPE_CHECKING:
    from rules.exchange import Exchange

_REF = re.compile(r"\$\$\{|\$\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class Ref:
    """`${a}`, `${a:-default}` or `${a|b|c:-default}`: the first selector with a value wins."""

    selectors: tuple[Selector, ...]
    default: Any = NOTHING  # a YAML scalar, or NOTHING when no default was given

    def read(self, x: Exchange, params: Mapping[str, str]) -> Any:
        """The value, the default, or a Failed: the key is left out and counted."""
        failure: Failed = MISSING_FAILURE
        for selector in self.selectors:
            value = selector.read(x, params)
            if isinstance(value, Failed):
                if not value.defaultable and failure.defaultable:
                    failure = value  # an error outranks "not there"
                continue
            if value is not NOTHING and value is not None:
                return value
        if failure.defaultable and self.default is not NOTHING:
            return self.default
        return failure


Part = str | Ref


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled value: `parts` holds literal text and selector references."""

    parts: tuple[Part, ...]
    literal: Any = NOTHING  # a non-string YAML scalar, used as is

    @property
    def refs(self) -> tuple[Ref, ...]:
        return tuple(p for p in self.parts if isinstance(p, Ref))

    def render(self, x: Exchange, params: Mapping[str, str]) -> Any:
        """The value for one exchange: NOTHING leaves the key out, Failed is counted."""
        if self.literal is not NOTHING:
            return self.literal
        parts = self.parts
        if len(parts) == 1:
            part = parts[0]
            return part if isinstance(part, str) else part.read(x, params)
        out: list[str] = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = part.read(x, params)
            if value is NOTHING or isinstance(value, Failed):
                return value
            out.append(_as_text(value))
        return "".join(out)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def compile_template(value: Any, environ: Mapping[str, str] | None = None) -> Template:
    """Compile a YAML value; raise ValueError (or MissingEnv) naming what is wrong."""
    if not isinstance(value, str):
        if isinstance(value, list | dict) or value is None:
            raise ValueError("must be a string, number or boolean")
        return Template((), literal=value)
    env = os.environ if environ is None else environ
    parts: list[Part] = []
    pos = 0
    for m in _REF.finditer(value):
        parts.append(_text(value, pos, m.start()))
        pos = m.end()
        if m.group(0) == "$${":
            parts.append("${")
            continue
        parts.append(_reference(m.group(1), env))
    parts.append(_text(value, pos, len(value)))
    return Template(_merge_text(parts))


def _text(value: str, start: int, end: int) -> str:
    text = value[start:end]
    if "${" in text:
        raise ValueError(f"unclosed or nested '${{' in {value!r}")
    return text


def _reference(body: str, env: Mapping[str, str]) -> Part:
    name, sep, default_text = body.partition(":-")
    name = name.strip()
    if name.startswith("env."):
        var = name[4:]
        current = env.get(var)
        if sep and not current:
            return default_text
        if current is None:
            raise MissingEnv(f"environment variable {var} is not set")
        return current
    selectors = tuple(Selector.parse(part.strip()) for part in name.split("|"))
    default = scalar_value(default_text) if sep else NOTHING
    return Ref(selectors, NOTHING if default is None else default)


def _merge_text(parts: list[Part]) -> tuple[Part, ...]:
    merged: list[Part] = []
    for part in parts:
        if isinstance(part, str):
            if not part:
                continue
            if merged and isinstance(merged[-1], str):
                merged[-1] += part
                continue
        merged.append(part)
    return tuple(merged) if merged else ("",)
