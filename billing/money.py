"""Money and the decimal arithmetic of billing, in one place.

Amounts are `Decimal` built from strings or ints, never floats. Every amount that
reaches a statement goes through `round_money()` exactly once per line: half away
from zero (ROUND_HALF_UP) to the currency's ISO 4217 minor unit, looked up in a
table (never guessed).

Exceptions:
    UnknownCurrency (ValueError) -- a code that is not in the ISO 4217 table.
"""

from __future__ import annotations

from decimal import (
    MAX_EMAX,
    MIN_EMIN,
    ROUND_CEILING,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from types import MappingProxyType
from typing import Final

EXACT: Final = Context(
    prec=100,
    rounding=ROUND_HALF_EVEN,
    Emin=MIN_EMIN,
    Emax=MAX_EMAX,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)
"""Context for quantity and money arithmetic (`EXACT.add`, `.subtract`, `.multiply`).

The default context keeps 28 significant digits, which a sum of large decimal values
outgrows; 100 digits keep every realistic sum and product exact (inputs are below
10^18). Inexact results are not trapped: a pathological input rounds at the 100th
digit instead of failing the event writer.
"""

_CEILING: Final = EXACT.copy()
_CEILING.rounding = ROUND_CEILING

# ISO 4217 active codes and their minor units (exponent). Most are 2; listing every
# code, also the 2s, means an unknown code is an error rather than a guessed "2".
_MINOR_UNITS: Final = MappingProxyType({
    **dict.fromkeys(
        (
            "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF",
            "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF",
        ),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
    **dict.fromkeys(
        (
            "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN",
            "BAM", "BBD", "BDT", "BGN", "BMD", "BND", "BOB", "BRL", "BSD", "BTN",
            "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CNY", "COP", "CRC", "CUP",
            "CVE", "CZK", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD",
            "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GTQ", "GYD", "HKD", "HNL",
            "HTG", "HUF", "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR",
            "KPW", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "MAD", "MDL",
            "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN",
            "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN",
            "PGK", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR", "SBD",
            "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN",
            "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD",
            "TZS", "UAH", "USD", "UYU", "UZS", "VES", "VED", "WST", "XCD", "XCG",
            "YER", "ZAR", "ZMW", "ZWG",
        ),
        2,
    ),
})


class UnknownCurrency(ValueError):
    """The currency code is not an ISO 4217 code of the table."""


def is_currency(code: str) -> bool:
    """True when `code` is an upper-case ISO 4217 code this module knows."""
    return code in _MINOR_UNITS


def minor_units(currency: str) -> int:
    """Digits after the decimal point of `currency` (USD 2, JPY 0, KWD 3).

    Raises UnknownCurrency for a code outside the table (codes are upper case).
    """
    try:
        return _MINOR_UNITS[currency]
    except KeyError:
        raise UnknownCurrency(f"{currency!r} is not an ISO 4217 currency code") from None


def round_money(amount: Decimal, currency: str) -> Decimal:
    """`amount` rounded half away from zero to the minor unit of `currency`.

    The result always carries exactly the minor-unit digits ("12.50", "1000") and is
    never negative zero. Raises UnknownCurrency.
    """
    exponent = Decimal(1).scaleb(-minor_units(currency))
    rounded = amount.quantize(exponent, rounding=ROUND_HALF_UP, context=EXACT)
    # -0.004 rounds to -0.00; show it as 0.00 so equal statements print equally.
    return rounded.copy_abs() if rounded.is_zero() else rounded


def to_minor(amount: Decimal, currency: str) -> int:
    """`amount` in integer minor units (cents for USD), rounded as `round_money`."""
    return int(round_money(amount, currency).scaleb(minor_units(currency), context=EXACT))


def format_money(amount: Decimal, currency: str) -> str:
    """Human text such as "1,234.50 USD" or "-1,000 JPY" (rounded as `round_money`)."""
    return f"{round_money(amount, currency):,f} {currency}"


def divide(numerator: Decimal, denominator: Decimal) -> Decimal:
    """`numerator / denominator`, exact whenever the quotient terminates within 100 digits.

    A quotient that does not terminate (x / 3) is rounded half-even at the 100th
    significant digit: far below any minor unit, so the one money rounding that
    follows gives the same cents as the exact rational would. Raises DivisionByZero.
    """
    return EXACT.divide(numerator, denominator)


def divide_up(numerator: Decimal, denominator: Decimal) -> Decimal:
    """Like `divide`, but a non-terminating quotient rounds up (toward +infinity).

    Used where the quotient is a need that must be fully met (credits that cover
    units), so that quotient x denominator >= numerator.
    """
    return _CEILING.divide(numerator, denominator)
