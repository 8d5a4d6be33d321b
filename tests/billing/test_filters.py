"""billing/filters.py: the number rule, the eight operators, and/or nesting, load errors."""

from __future__ import annotations

import pickle
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.events import MetadataValue
from billing.filters import (
    MAX_NESTING,
    OPERATORS,
    Clause,
    Filter,
    Group,
    parse_filter,
    parse_number,
)
from billing.settings import Problems, Section


def compiled(data: dict[str, Any]) -> Filter:
    problems = Problems()
    found = parse_filter(Section(data, "filter", problems))
    assert not problems.errors, problems.errors
    assert found is not None
    return found


def errors_of(data: object) -> list[str]:
    problems = Problems()
    assert parse_filter(Section(data, "filter", problems)) is None
    return [f"{p.path}: {p.message}" for p in problems.errors]


def one(key: str, operator: str, value: object) -> dict[str, Any]:
    return {"conjunction": "and", "clauses": [{"key": key, "operator": operator, "value": value}]}


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    ("value", "number"),
    [
        (200, Decimal(200)), (-7, Decimal(-7)), (Decimal("1.50"), Decimal("1.50")),
        ("-12.5", Decimal("-12.5")), ("1e3", Decimal(1000)), ("1E-2", Decimal("0.01")),
        ("2.5e+2", Decimal(250)), ("007", Decimal(7)), ("0", Decimal(0)),
        (10**18 - 1, Decimal(10**18 - 1)), ("9.99e17", Decimal("9.99e17")),
        ("-999999999999999999.9", Decimal("-999999999999999999.9")),
        # not numbers
        (True, None), (False, None), ("NaN", None), ("nan", None), ("Infinity", None),
        ("-Infinity", None), (Decimal("NaN"), None), (Decimal("Infinity"), None),
        (" 5", None), ("5 ", None), ("1_000", None), ("+5", None), (".5", None), ("5.", None),
        ("\u0663", None), ("\uff11", None), ("", None), ("-", None), ("1e", None),
        ("0x10", None), (10**18, None), (-(10**18), None), ("1e18", None), (None, None),
        ([1], None), (1.5, None),
    ],
)
def test_parse_number(value: object, number: Decimal | None) -> None:
    found = parse_number(value)
    assert found == number
    if number is not None:
        assert isinstance(found, Decimal)


# ---------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("operator", "expected", "actual", "match"),
    [
        ("equals", 200, "200", True),
        ("equals", "200", 200, True),
        ("equals", 200, Decimal("200.0"), True),
        ("equals", "1e3", 1000, True),
        ("equals", "hd", "hd", True),
        ("equals", "hd", "HD", False),
        ("equals", True, True, True),
        ("equals", 1, True, False),  # a boolean is not a number
        ("equals", "hd", 5, False),
        ("not_equals", "hd", "sd", True),
        ("not_equals", 200, "200", False),
        ("not_equals", "hd", "HD", True),
        ("greater_than", 100, 200, True),
        ("greater_than", 100, "200", True),
        ("greater_than", 100, 100, False),
        ("greater_than", 100, "abc", False),
        ("greater_than", 100, True, False),
        ("greater_than", "1.5", Decimal("1.50001"), True),
        ("greater_than_or_equals", 100, 100, True),
        ("greater_than_or_equals", 100, "99.999", False),
        ("less_than", 0, "-1e2", True),
        ("less_than", 0, 0, False),
        ("less_than_or_equals", 0, 0, True),
        ("less_than_or_equals", 0, "z", False),
        ("contains", "gpt", "gpt-4o", True),
        ("contains", "GPT", "gpt-4o", False),
        ("contains", "5", Decimal("1.50"), True),  # numbers compare their text
        ("contains", 20, 200, True),
        ("contains", "ru", True, True),  # a boolean's text is "true"
        ("does_not_contain", "hd", "standard", True),
        ("does_not_contain", "hd", "uhd", False),
        ("does_not_contain", 7, 170, False),
    ],
)
def test_operators(operator: str, expected: object, actual: MetadataValue, match: bool) -> None:
    assert compiled(one("k", operator, expected))({"k": actual}) is match


@pytest.mark.parametrize("operator", OPERATORS)
def test_a_missing_key_never_matches(operator: str) -> None:
    predicate = compiled(one("k", operator, 1))
    assert predicate({"other": 1}) is False
    assert predicate({}) is False


REFERENCE_STANDARD_IMAGES = {  # meterproxy.yaml, meter standard_images
    "conjunction": "or",
    "clauses": [
        {"key": "quality", "operator": "equals", "value": "standard"},
        {"key": "quality", "operator": "does_not_contain", "value": "hd"},
    ],
}


@pytest.mark.parametrize(
    ("metadata", "match"),
    [({"quality": "standard"}, True), ({"quality": "hd"}, False), ({"quality": "low"}, True),
     ({"quality": "uhd"}, False), ({"n": 1}, False)],
)
def test_reference_or_filter(metadata: dict[str, MetadataValue], match: bool) -> None:
    assert compiled(REFERENCE_STANDARD_IMAGES)(metadata) is match


NESTED = {
    "conjunction": "and",
    "clauses": [
        {"key": "status", "operator": "less_than", "value": 400},
        {"conjunction": "or", "clauses": [
            {"key": "model", "operator": "contains", "value": "gpt"},
            {"conjunction": "and", "clauses": [
                {"key": "tier", "operator": "equals", "value": "pro"},
                {"key": "n", "operator": "greater_than", "value": "1"},
            ]},
        ]},
    ],
}


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({"status": 200, "model": "gpt-4o"}, True),
        ({"status": 500, "model": "gpt-4o"}, False),
        ({"status": "200", "model": "claude", "tier": "pro", "n": 2}, True),
        ({"status": 200, "model": "claude", "tier": "pro", "n": 1}, False),
        ({"status": 200, "tier": "pro", "n": "3"}, True),
        ({"model": "gpt"}, False),
    ],
)
def test_nested_groups(metadata: dict[str, MetadataValue], match: bool) -> None:
    assert compiled(NESTED)(metadata) is match


def test_to_json_gives_back_the_configuration() -> None:
    assert compiled(NESTED).to_json() == NESTED
    assert compiled(REFERENCE_STANDARD_IMAGES).to_json() == REFERENCE_STANDARD_IMAGES


def test_filters_compare_by_their_groups() -> None:
    assert compiled(NESTED) == compiled(NESTED)
    assert compiled(NESTED) != compiled(REFERENCE_STANDARD_IMAGES)


def test_a_filter_survives_pickling_and_still_filters() -> None:
    """The store process gets the meters, filters included, as a pickle."""
    for data in (NESTED, REFERENCE_STANDARD_IMAGES):
        original = compiled(data)
        copy = pickle.loads(pickle.dumps(original))
        assert copy == original
        for metadata in ({"status": 200, "tier": "pro", "n": "3"}, {"quality": "hd"}, {}):
            assert copy(metadata) is original(metadata)


def test_a_clause_refuses_a_non_number_for_ordering() -> None:
    with pytest.raises(ValueError, match="compares numbers"):
        Clause("k", "greater_than", "abc")


# ------------------------------------------------------------------- nesting


def nested(depth: int) -> dict[str, Any]:
    """A filter with `depth` groups nested below the top-level one."""
    node: dict[str, Any] = one("k", "equals", "v")
    for _ in range(depth):
        node = {"conjunction": "or", "clauses": [node]}
    return node


def test_three_nested_levels_are_allowed() -> None:
    predicate = compiled(nested(MAX_NESTING))
    assert predicate({"k": "v"}) and not predicate({"k": "w"})


def test_a_fourth_nested_level_is_an_error() -> None:
    path = "filter" + ".clauses[0]" * (MAX_NESTING + 1)
    assert errors_of(nested(MAX_NESTING + 1)) == [f"{path}: filters nest at most 3 levels deep"]


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (one("k", "eq", 1), "filter.clauses[0].operator: must be one of equals, not_equals, "
                            "greater_than, greater_than_or_equals, less_than, "
                            "less_than_or_equals, contains, does_not_contain, got 'eq'"),
        ({"conjunction": "xor", "clauses": [{"key": "k", "operator": "equals", "value": 1}]},
         "filter.conjunction: must be one of and, or, got 'xor'"),
        ({"clauses": [{"key": "k", "operator": "equals", "value": 1}]},
         "filter.conjunction: required"),
        ({"conjunction": "and", "clauses": []}, "filter.clauses: must list at least one clause"),
        ({"conjunction": "and"}, "filter.clauses: required"),
        ({"conjunction": "and", "clauses": [{"key": "k", "operator": "equals"}]},
         "filter.clauses[0].value: required"),
        (one("k", "greater_than", "big"),
         "filter.clauses[0].value: greater_than compares numbers, got 'big'"),
        (one("k", "equals", [1, 2]),
         "filter.clauses[0].value: expected a string, number or boolean, got a list"),
        (one("", "equals", 1), "filter.clauses[0].key: must not be empty"),
        ({"conjunction": "and", "clauses": [{"key": "k", "operator": "equals", "value": 1,
                                             "note": "x"}]},
         "filter.clauses[0].note: unknown key"),
        ({"conjunction": "and", "clauses": [{"operator": "equals", "value": 1}]},
         "filter.clauses[0].key: required"),
        ("and", "filter: must be a mapping, got a string"),
    ],
)
def test_load_errors_name_the_culprit(data: object, error: str) -> None:
    assert error in errors_of(data)


def test_a_value_may_come_from_the_environment() -> None:
    problems = Problems()
    section = Section(one("tier", "equals", "${env.TIER}"), "filter", problems, {"TIER": "pro"})
    predicate = parse_filter(section)
    assert predicate is not None and predicate({"tier": "pro"})


# ---------------------------------------------------------------- properties

keys = st.sampled_from(["a", "b", "c"])
values = st.one_of(st.integers(-5, 5), st.sampled_from(["x", "xy", "5", "-1"]))
clauses = st.builds(Clause, keys, st.sampled_from(["equals", "contains", "greater_than"]),
                    st.integers(-5, 5))
metadata = st.dictionaries(keys, values)


@settings(deadline=None)
@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6))
def test_numbers_and_their_text_compare_alike(expected: int, actual: int) -> None:
    for configured in (expected, str(expected)):
        for sent in (actual, str(actual), Decimal(actual)):
            assert compiled(one("k", "equals", configured))({"k": sent}) is (expected == actual)
            assert compiled(one("k", "less_than", configured))({"k": sent}) is (actual < expected)


@settings(deadline=None)
@given(st.sampled_from(["and", "or"]), st.lists(clauses, min_size=1, max_size=4), metadata)
def test_a_group_is_all_or_any_of_its_clauses(conjunction: str, parts: list[Clause],
                                              event: dict[str, MetadataValue]) -> None:
    group = Filter.compile(Group("and" if conjunction == "and" else "or", tuple(parts)))
    singles = [Filter.compile(Group("and", (part,)))(event) for part in parts]
    assert group(event) is (all(singles) if conjunction == "and" else any(singles))
