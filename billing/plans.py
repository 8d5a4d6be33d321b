"""Plans, prices and billing settings, parsed once into frozen values.

`parse_plans` and `parse_billing` record every problem in the root section's
`Problems` (paths such as `plans[0].prices[2].unit_size`) and leave faulty entries out;
the caller raises `ConfigError` when any were found.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from zoneinfo import ZoneInfo, available_timezones

from billing.cycles import Cycle
from billing.meters import Meter
from billing.money import is_currency, minor_units
from billing.settings import Section

_ZERO = Decimal(0)
_ONE = Decimal(1)
_HUNDRED = Decimal(100)
DEFAULT_GRACE_MS = 3_600_000
DEFAULT_INGEST_PAST_MS = 3_600_000
DEFAULT_INGEST_FUTURE_MS = 300_000


@dataclass(frozen=True, slots=True)
class CreditPolicy:
    """Included credits of one price: `per_cycle` renewed every period, each covering
    `units_per_credit` billed units; `rollover_percent` of a period's unused per-cycle
    credits carry over to the next period only."""

    per_cycle: Decimal = _ZERO
    units_per_credit: Decimal = _ONE
    rollover_percent: Decimal = _ZERO


@dataclass(frozen=True, slots=True)
class Price:
    """How one meter is billed. `free_threshold` and credits count billed units, i.e.
    after dividing the meter's quantity by `unit_size`."""

    meter: str
    price_per_unit: Decimal
    free_threshold: Decimal = _ZERO
    unit_size: Decimal = _ONE
    credits: CreditPolicy = CreditPolicy()


@dataclass(frozen=True, slots=True)
class Plan:
    """A plan: prices in configuration order (the order of statement lines)."""

    name: str
    currency: str
    cycle: Cycle
    fixed_price: Decimal | None
    prices: tuple[Price, ...]


@dataclass(frozen=True, slots=True)
class BillingSettings:
    """`billing:`. `default_plan` None: customers without a plan get no statements."""

    default_plan: str | None
    timezone: ZoneInfo
    grace_period_ms: int = DEFAULT_GRACE_MS
    ingest_past_ms: int = DEFAULT_INGEST_PAST_MS
    ingest_future_ms: int = DEFAULT_INGEST_FUTURE_MS


# ------------------------------------------------------------------- plans


def parse_plans(root: Section, meters: Iterable[Meter]) -> tuple[Plan, ...]:
    """Read `plans:`, checking that every priced meter is one of `meters`."""
    meter_names = frozenset(meter.name for meter in meters) | _written_names(root, "meters")
    plans: list[Plan] = []
    seen: set[str] = set()
    for section in root.sections("plans"):
        plan = _parse_plan(section, meter_names)
        if plan is not None and plan.name in seen:
            section.fail("name", f"duplicate plan name {plan.name!r}")
        elif plan is not None:
            seen.add(plan.name)
            plans.append(plan)
    return tuple(plans)


def _parse_plan(section: Section, meter_names: frozenset[str]) -> Plan | None:
    errors = len(section.problems.errors)
    name: str = section.text("name")
    if section.has("name") and not name:
        section.fail("name", "must not be empty")
    currency = _parse_currency(section)
    cycle = _parse_cycle(section)
    fixed_price: Decimal | None = section.number("fixed_price", None, minimum=_ZERO)
    if fixed_price is not None and currency:
        _warn_sub_minor(section, "fixed_price", fixed_price, currency)
    prices = _parse_prices(section, meter_names)
    section.done()
    if len(section.problems.errors) > errors or cycle is None:
        return None
    return Plan(name, currency, cycle, fixed_price, prices)


def _parse_currency(section: Section) -> str:
    currency: str = section.text("currency")
    if section.has("currency") and not is_currency(currency):
        section.fail(
            "currency",
            f"unknown currency {currency!r} (an upper-case ISO 4217 code such as USD, EUR or JPY)",
        )
        return ""
    return currency


def _parse_cycle(section: Section) -> Cycle | None:
    text: str = section.text("cycle")
    if not section.has("cycle"):
        return None
    try:
        return Cycle.parse(text)
    except ValueError as exc:
        section.fail("cycle", str(exc))
        return None


def _warn_sub_minor(section: Section, key: str, amount: Decimal, currency: str) -> None:
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > minor_units(currency):
        section.problems.warn(
            section.key_path(key),
            f"{amount} has more decimals than {currency} has; statements round it half up",
        )


def _parse_prices(section: Section, meter_names: frozenset[str]) -> tuple[Price, ...]:
    prices: list[Price] = []
    priced: set[str] = set()
    for price_section in section.sections("prices"):
        price = _parse_price(price_section, meter_names)
        if price is not None and price.meter in priced:
            price_section.fail("meter", f"meter {price.meter!r} is priced twice in this plan")
        elif price is not None:
            priced.add(price.meter)
            prices.append(price)
    return tuple(prices)


def _parse_price(section: Section, meter_names: frozenset[str]) -> Price | None:
    errors = len(section.problems.errors)
    meter: str = section.text("meter")
    if section.has("meter") and meter not in meter_names:
        section.fail("meter", f"unknown meter {meter!r}")
    price_per_unit: Decimal = section.number("price_per_unit", minimum=_ZERO)
    free_threshold: Decimal = section.number("free_threshold", _ZERO, minimum=_ZERO)
    unit_size = _positive(section, "unit_size")
    credits = _parse_credits(section.section("credits")) if section.has("credits") else None
    section.done()
    if len(section.problems.errors) > errors:
        return None
    return Price(meter, price_per_unit, free_threshold, unit_size, credits or CreditPolicy())


def _parse_credits(section: Section) -> CreditPolicy:
    per_cycle: Decimal = section.number("per_cycle", _ZERO, minimum=_ZERO)
    units_per_credit = _positive(section, "units_per_credit")
    rollover: Decimal = section.number("rollover_percent", _ZERO, minimum=_ZERO)
    if rollover > _HUNDRED:
        section.fail("rollover_percent", f"must be at most 100, got {rollover}")
    section.done()
    return CreditPolicy(per_cycle, units_per_credit, rollover)


def _positive(section: Section, key: str) -> Decimal:
    """An optional number that must be greater than 0; 1 when absent."""
    value: Decimal = section.number(key, _ONE)
    if value <= 0:
        section.fail(key, f"must be greater than 0, got {value}")
    return value


# ----------------------------------------------------------------- billing


def _written_names(root: Section, key: str) -> frozenset[str]:
    """Names of every plan or meter written in the file, valid or not: one with a problem
    of its own is reported once, not again by everything that names it."""
    written = root.data.get(key)
    if not isinstance(written, list):
        return frozenset()
    return frozenset(
        item["name"]
        for item in written
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    )


def parse_billing(root: Section, plans: Iterable[Plan]) -> BillingSettings:
    """Read `billing:` (optional). Warns when `grace_period` is shorter than
    `ingest_window.past`: ingest could then accept events for a final period."""
    section = root.section("billing")
    default_plan: str | None = section.text("default_plan", None)
    names = {plan.name for plan in plans} | _written_names(root, "plans")
    if default_plan is not None and default_plan not in names:
        section.fail("default_plan", f"unknown plan {default_plan!r}")
    timezone = _parse_timezone(section)
    grace: int = section.duration_ms("grace_period", DEFAULT_GRACE_MS)
    window = section.section("ingest_window")
    past: int = window.duration_ms("past", DEFAULT_INGEST_PAST_MS)
    future: int = window.duration_ms("future", DEFAULT_INGEST_FUTURE_MS)
    window.done()
    section.done()
    if grace < past:
        root.problems.warn(
            section.key_path("grace_period"),
            "shorter than ingest_window.past: events ingested late for a period that is "
            "already final become adjustments on the next statement",
        )
    return BillingSettings(default_plan, timezone, grace, past, future)


def _parse_timezone(section: Section) -> ZoneInfo:
    key: str = section.text("timezone", "UTC")
    if key not in available_timezones():
        section.fail(
            "timezone", f"unknown time zone {key!r} (an IANA name such as UTC or Europe/Berlin)"
        )
        return ZoneInfo("UTC")
    return ZoneInfo(key)
