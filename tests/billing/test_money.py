"""billing/money.py: the minor-unit table, the one rounding function, exact arithmetic."""

from __future__ import annotations

from decimal import Decimal, DivisionByZero, getcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.money import (
    EXACT,
    UnknownCurrency,
    divide,
    divide_up,
    format_money,
    is_currency,
    minor_units,
    round_money,
    to_minor,
)


@pytest.mark.parametrize(
    ("currency", "digits"),
    [
        ("USD", 2), ("EUR", 2), ("GBP", 2), ("CHF", 2), ("CAD", 2), ("AUD", 2), ("INR", 2),
        ("CNY", 2), ("BRL", 2), ("MXN", 2), ("SEK", 2), ("NOK", 2), ("DKK", 2), ("PLN", 2),
        ("CZK", 2), ("HUF", 2),
        ("JPY", 0), ("KRW", 0), ("ISK", 0), ("CLP", 0), ("VND", 0), ("UGX", 0),
        ("KWD", 3), ("BHD", 3), ("JOD", 3), ("OMR", 3), ("TND", 3),
        ("CLF", 4),
    ],
)
def test_minor_units_come_from_the_iso_table(currency: str, digits: int) -> None:
    assert minor_units(currency) == digits
    assert is_currency(currency)


@pytest.mark.parametrize("code", ["XYZ", "usd", "", "US", "EURO"])
def test_unknown_currency_is_an_error(code: str) -> None:
    assert not is_currency(code)
    with pytest.raises(UnknownCurrency, match="ISO 4217"):
        minor_units(code)
    with pytest.raises(ValueError):
        round_money(Decimal(1), code)


# Rounding at exactly half of the minor unit, both signs, in three currencies.
@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("1.005", "USD", "1.01"),
        ("-1.005", "USD", "-1.01"),
        ("2.675", "USD", "2.68"),  # 2.675 as a float would round down to 2.67
        ("0.125", "USD", "0.13"),
        ("1.00499999", "USD", "1.00"),
        ("12.5", "USD", "12.50"),
        ("2.5", "JPY", "3"),
        ("-2.5", "JPY", "-3"),
        ("0.5", "JPY", "1"),
        ("1000.49", "JPY", "1000"),
        ("1.0005", "KWD", "1.001"),
        ("-1.0005", "KWD", "-1.001"),
        ("0.0004999", "KWD", "0.000"),
        ("7", "KWD", "7.000"),
        ("-0.004", "USD", "0.00"),  # never negative zero
    ],
)
def test_round_money_is_half_away_from_zero_to_the_minor_unit(
    amount: str, currency: str, expected: str
) -> None:
    assert str(round_money(Decimal(amount), currency)) == expected


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("12.50", "USD", 1250), ("-1.005", "USD", -101), ("1000", "JPY", 1000),
        ("2.5", "JPY", 3), ("1.2345", "KWD", 1235), ("12", "KWD", 12000), ("1E+3", "USD", 100000),
    ],
)
def test_to_minor_gives_integer_minor_units(amount: str, currency: str, minor: int) -> None:
    assert to_minor(Decimal(amount), currency) == minor


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        ("1234.5", "USD", "1,234.50 USD"),
        ("-1000", "JPY", "-1,000 JPY"),
        ("0.1235", "KWD", "0.124 KWD"),
        ("1E+6", "EUR", "1,000,000.00 EUR"),
    ],
)
def test_format_money(amount: str, currency: str, text: str) -> None:
    assert format_money(Decimal(amount), currency) == text


def test_exact_context_keeps_digits_the_default_context_drops() -> None:
    big, tiny = Decimal("123456789012345678.123456789012"), Decimal("0.000000000001")
    assert EXACT.add(big, tiny) == Decimal("123456789012345678.123456789013")
    assert getcontext().add(big, tiny) != Decimal("123456789012345678.123456789013")


def test_divide_is_exact_when_the_quotient_terminates() -> None:
    assert divide(Decimal(12_500_000_000), Decimal("1e9")) == Decimal("12.5")
    assert divide(Decimal(1), Decimal(1024)) == Decimal("0.0009765625")
    with pytest.raises(DivisionByZero):
        divide(Decimal(1), Decimal(0))


def test_divide_up_never_falls_short_of_the_numerator() -> None:
    third = divide_up(Decimal(10), Decimal(3))
    assert EXACT.multiply(third, Decimal(3)) >= 10
    assert EXACT.multiply(divide(Decimal(10), Decimal(3)), Decimal(3)) < 10


amounts = st.decimals(min_value=-(10**12), max_value=10**12, allow_nan=False,
                      allow_infinity=False, places=6)
currencies = st.sampled_from(["USD", "JPY", "KWD", "CLF"])


@settings(deadline=None)
@given(amounts, currencies)
def test_rounding_moves_at_most_half_a_minor_unit(amount: Decimal, currency: str) -> None:
    rounded = round_money(amount, currency)
    half = Decimal(1).scaleb(-minor_units(currency)) / 2
    assert abs(rounded - amount) <= half
    assert round_money(rounded, currency) == rounded


@settings(deadline=None)
@given(amounts, currencies)
def test_rounding_is_symmetric_around_zero(amount: Decimal, currency: str) -> None:
    assert round_money(-amount, currency) == -round_money(amount, currency)
    assert to_minor(-amount, currency) == -to_minor(amount, currency)
