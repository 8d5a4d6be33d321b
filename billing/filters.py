"""Meter filters: and/or groups of clauses over event metadata, compiled once at load.

Semantics (the contract's comment after `meters:`):
- A clause whose key is missing from the metadata does not match, whatever its
  operator (also `not_equals` and `does_not_contain`).
- When both the event's value and the clause's value are numbers (`parse_number`),
  they compare as numbers: 200 equals "200" and "2e2".
- Otherwise equals/not_equals compare the values' text, case-sensitively.
- Ordering operators (greater_than, ...) match only two numbers; the configured
  value of such a clause must be a number (checked at load).
- contains/does_not_contain test whether the clause's text is a substring of the
  event value's text.

The text of a value is the string itself; for a boolean "true" or "false"; for a
number its `str()`: "200", "1.50", and for exponent forms Python's canonical
spelling ("1E+3"). So `contains "5"` matches the number 1.50.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, get_args

from billing.events import Metadata, MetadataValue
from billing.settings import MISSING, Section, type_name

Operator = Literal[
    "equals", "not_equals", "greater_than", "greater_than_or_equals",
    "less_than", "less_than_or_equals", "contains", "does_not_contain",
]
OPERATORS: tuple[Operator, ...] = get_args(Operator)
_ORDERING = frozenset(OPERATORS[2:6])
Conjunction = Literal["and", "or"]
CONJUNCTIONS: tuple[Conjunction, ...] = get_args(Conjunction)
FilterValue = str | int | Decimal | bool
Predicate = Callable[[Metadata], bool]
Test = Callable[[MetadataValue], bool]

MAX_NESTING = 3
"""Groups nested below the top-level filter, as in Dodo Payments' meter API."""

# A JSON number's grammar (leading zeros tolerated), ASCII digits only: no spaces,
# no "_", no "+5", ".5", "NaN" or "Infinity", which Decimal() would accept.
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_LIMIT = Decimal(10) ** 18


def parse_number(value: object) -> Decimal | None:
    """The exact number `value` stands for, or None when it is not a number.

    A number is an int or a finite Decimal (never a bool), or a string in JSON
    number syntax such as "-12.5" or "1e3"; either way |x| < 10^18.
    """
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        if not _NUMBER.fullmatch(value):
            return None
        number = Decimal(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = Decimal(value)
    else:
        return None
    if not number.is_finite() or number.copy_abs() >= _LIMIT:
        return None
    return number


def text_of(value: FilterValue) -> str:
    """The text a value compares by when it is not compared as a number."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class Clause:
    """`{key, operator, value}`: one test of one metadata key."""

    key: str
    operator: Operator
    value: FilterValue

    def __post_init__(self) -> None:
        if self.operator in _ORDERING and parse_number(self.value) is None:
            raise ValueError(f"{self.operator} compares numbers, got {self.value!r}")

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "operator": self.operator, "value": self.value}


@dataclass(frozen=True, slots=True)
class Group:
    """`{conjunction, clauses}`: clauses and nested groups joined by and/or."""

    conjunction: Conjunction
    clauses: tuple[Clause | Group, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "conjunction": self.conjunction,
            "clauses": [clause.to_json() for clause in self.clauses],
        }


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed filter and its compiled predicate; equal when their groups are equal."""

    group: Group
    matches: Predicate = field(compare=False, repr=False)

    @classmethod
    def compile(cls, group: Group) -> Filter:
        return cls(group, _compile(group))

    def __call__(self, metadata: Metadata) -> bool:
        """True when the event's metadata passes the filter."""
        return self.matches(metadata)

    def __reduce__(self) -> tuple[Any, ...]:
        # The predicate is a closure, which pickle cannot carry: a pickled Filter (the
        # meters sent to the store process) is its group, compiled again on arrival.
        return (Filter.compile, (self.group,))

    def to_json(self) -> dict[str, Any]:
        return self.group.to_json()


# ------------------------------------------------------------------ compiling


def _compile(node: Clause | Group) -> Predicate:
    if isinstance(node, Clause):
        return _compile_clause(node)
    parts = tuple(_compile(clause) for clause in node.clauses)
    if len(parts) == 1:
        return parts[0]
    if node.conjunction == "and":
        return lambda metadata: all(part(metadata) for part in parts)
    return lambda metadata: any(part(metadata) for part in parts)


def _compile_clause(clause: Clause) -> Predicate:
    key, test = clause.key, _TESTS[clause.operator](clause.value)

    def predicate(metadata: Metadata) -> bool:
        value = metadata.get(key)
        return value is not None and test(value)

    return predicate


def _equals(expected: FilterValue) -> Test:
    number, text = parse_number(expected), text_of(expected)

    def test(actual: MetadataValue) -> bool:
        if number is not None:
            other = parse_number(actual)
            if other is not None:
                return other == number
        return text_of(actual) == text

    return test


def _not_equals(expected: FilterValue) -> Test:
    equals = _equals(expected)
    return lambda actual: not equals(actual)


def _ordering(compare: Callable[[Decimal, Decimal], bool]) -> Callable[[FilterValue], Test]:
    def make(expected: FilterValue) -> Test:
        number = parse_number(expected)
        assert number is not None  # Clause refuses a non-number for ordering

        def test(actual: MetadataValue) -> bool:
            other = parse_number(actual)
            return other is not None and compare(other, number)

        return test

    return make


def _contains(expected: FilterValue) -> Test:
    text = text_of(expected)
    return lambda actual: text in text_of(actual)


def _does_not_contain(expected: FilterValue) -> Test:
    text = text_of(expected)
    return lambda actual: text not in text_of(actual)


_TESTS: dict[Operator, Callable[[FilterValue], Test]] = {
    "equals": _equals,
    "not_equals": _not_equals,
    "greater_than": _ordering(lambda a, b: a > b),
    "greater_than_or_equals": _ordering(lambda a, b: a >= b),
    "less_than": _ordering(lambda a, b: a < b),
    "less_than_or_equals": _ordering(lambda a, b: a <= b),
    "contains": _contains,
    "does_not_contain": _does_not_contain,
}


# ------------------------------------------------------------------- parsing


def parse_filter(section: Section) -> Filter | None:
    """Read a `filter` mapping; None when it has problems (recorded in `section`)."""
    errors = len(section.problems.errors)
    group = _parse_group(section, depth=0)
    if len(section.problems.errors) > errors:
        return None
    return Filter.compile(group)


def _parse_group(section: Section, depth: int) -> Group:
    conjunction = section.choice("conjunction", CONJUNCTIONS)
    clauses: list[Clause | Group] = []
    for element in section.sections("clauses", required=True):
        if not (element.has("clauses") or element.has("conjunction")):
            clauses.append(_parse_clause(element))
        elif depth >= MAX_NESTING:
            element.problems.add(element.path, f"filters nest at most {MAX_NESTING} levels deep")
        else:
            clauses.append(_parse_group(element, depth + 1))
    if section.raw("clauses") == []:
        section.fail("clauses", "must list at least one clause")
    section.done()
    return Group(conjunction, tuple(clauses))


def _parse_clause(section: Section) -> Clause:
    key = section.text("key")
    if section.has("key") and not key:
        section.fail("key", "must not be empty")
    operator: Operator = section.choice("operator", OPERATORS)
    errors = len(section.problems.errors)
    value = _parse_value(section)
    if operator in _ORDERING and parse_number(value) is None:
        if len(section.problems.errors) == errors:
            section.fail("value", f"{operator} compares numbers, got {value!r}")
        value = 0  # reported above; a placeholder lets parsing go on
    section.done()
    return Clause(key, operator, value)


def _parse_value(section: Section) -> FilterValue:
    value = section.raw("value", MISSING)
    if isinstance(value, str):
        text: str = section.text("value")  # expands ${env.NAME}
        return text
    if isinstance(value, bool | int | Decimal):
        return value
    if value is MISSING or value is None:
        section.fail("value", "required")
    else:
        section.fail("value", f"expected a string, number or boolean, got {type_name(value)}")
    return ""
