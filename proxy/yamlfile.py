"""Read a YAML file into plain values plus a map from config paths to line numbers.

The schema is YAML 1.2 core (yes/no/on/off and 1:30 stay strings), numbers with a
fraction or exponent become exact `Decimal`s, and duplicate keys are errors. The
line map lets every layer report problems as `FILE:LINE: path: message`.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from billing.settings import (
    YAML12_BOOL,
    YAML12_FLOAT,
    YAML12_INT,
    YAML12_NULL,
    ConfigError,
    Problem,
    scalar_value,
)


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader whose implicit scalar resolution follows the YAML 1.2 core schema."""


_Yaml12Loader.yaml_implicit_resolvers = {}
for _kind, _pattern, _first in [
    ("bool", YAML12_BOOL, "tTfF"),
    ("null", YAML12_NULL, ["~", "n", "N", ""]),
    ("int", YAML12_INT, "-+0123456789"),
    ("float", YAML12_FLOAT, "-+.0123456789"),
]:
    _Yaml12Loader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_kind}", re.compile(_pattern), list(_first)
    )

LineMap = dict[str, int]


def _scalar(node: yaml.ScalarNode) -> Any:
    kind = node.tag.rsplit(":", 1)[-1]
    return scalar_value(node.value, kind if kind in ("bool", "null", "int", "float") else "str")


class _Builder:
    def __init__(self) -> None:
        self.lines: LineMap = {}
        self.problems: list[Problem] = []

    def build(self, node: yaml.Node, path: str) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        try:
            node.value.encode("utf-8")
        except UnicodeEncodeError:  # a "\ud800"-style escape: lone surrogates
            line = node.start_mark.line + 1
            self.problems.append(Problem(path, "not valid Unicode (a lone surrogate)", line))
            return ""
        return _scalar(node)

    def _mapping(self, node: yaml.MappingNode, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.build(key_node, path)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str | int) or isinstance(key, bool):
                self.problems.append(Problem(path, f"key {key!r} must be a string", line))
                continue
            key = str(key)
            child = f"{path}.{key}" if path else key
            if key in out:
                self.problems.append(Problem(child, "duplicate key", line))
                continue
            self.lines[child] = line
            out[key] = self.build(value_node, child)
        return out


def line_for(lines: LineMap, path: str) -> int | None:
    """The line of `path`, or of its nearest ancestor that the file has."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return lines.get("")


def parse_yaml(text: str, filename: str) -> tuple[Any, LineMap]:
    """Parse YAML text; raise ConfigError (with line) on syntax errors and duplicate keys."""
    try:
        node = yaml.compose(text, Loader=_Yaml12Loader)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_syntax_problem(exc, text)], filename) from exc
    if node is None:
        return {}, {}
    builder = _Builder()
    data = builder.build(node, "")
    if builder.problems:
        raise ConfigError(builder.problems, filename)
    return data, builder.lines


def _syntax_problem(exc: yaml.MarkedYAMLError, text: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else None
    message = f"YAML syntax error: {exc.problem or exc.context}"
    near = _lines_around(text, line)
    if "${" in near or "{" in near:
        message += ' (a value containing "${" or "{" inside {...} or [...] must be quoted)'
    return Problem("", message, line)


def _lines_around(text: str, line: int | None) -> str:
    if line is None:
        return ""
    lines = text.splitlines()
    return "\n".join(lines[max(0, line - 2) : line + 1])
