"""billing/plans.py: `plans:` and `billing:` parsed into frozen values, errors and warnings."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from billing.cycles import Cycle
from billing.meters import Meter
from billing.plans import (
    BillingSettings,
    CreditPolicy,
    Plan,
    Price,
    parse_billing,
    parse_plans,
)
from billing.settings import Problems, Section

METERS = (
    Meter("api_calls", "api.call", "count"),
    *(Meter(name, "e", "sum", "n") for name in ("standard_images", "hd_images", "output_tokens",
                                                 "egress_bytes", "peak_seats", "storage_gb")),
)

REFERENCE = yaml.safe_load("""
plans:
  - name: pro
    currency: USD
    cycle: monthly
    fixed_price: "49.00"
    prices:
      - meter: api_calls
        price_per_unit: "0.001"
        free_threshold: 10000
      - meter: standard_images
        price_per_unit: "0.04"
      - meter: hd_images
        price_per_unit: "0.08"
      - meter: output_tokens
        price_per_unit: "0.00002"
        credits:
          per_cycle: 50000
          units_per_credit: 1
          rollover_percent: 0
      - meter: egress_bytes
        unit_size: 1000000000
        price_per_unit: "5"
        free_threshold: 10
      - meter: peak_seats
        price_per_unit: "2"
        free_threshold: 5
      - meter: storage_gb
        price_per_unit: "0.10"

billing:
  default_plan: pro
  timezone: UTC
  grace_period: 1h
  ingest_window: {past: 1h, future: 5m}
""")


class Parsed:
    def __init__(self, data: dict[str, Any]) -> None:
        problems = Problems()
        root = Section(data, "", problems)
        self.plans = parse_plans(root, METERS)
        self.billing = parse_billing(root, self.plans)
        self.errors = [f"{p.path}: {p.message}" for p in problems.errors]
        self.warnings = [f"{p.path}: {p.message}" for p in problems.warnings]


def test_the_reference_plan() -> None:
    parsed = Parsed(REFERENCE)
    assert parsed.errors == [] and parsed.warnings == []
    (pro,) = parsed.plans
    assert pro == Plan(
        name="pro", currency="USD", cycle=Cycle(calendar="monthly"),
        fixed_price=Decimal("49.00"),
        prices=(
            Price("api_calls", Decimal("0.001"), free_threshold=Decimal(10000)),
            Price("standard_images", Decimal("0.04")),
            Price("hd_images", Decimal("0.08")),
            Price("output_tokens", Decimal("0.00002"),
                  credits=CreditPolicy(Decimal(50000), Decimal(1), Decimal(0))),
            Price("egress_bytes", Decimal(5), Decimal(10), Decimal(1_000_000_000)),
            Price("peak_seats", Decimal(2), Decimal(5)),
            Price("storage_gb", Decimal("0.10")),
        ),
    )
    assert str(pro.fixed_price) == "49.00"  # read exactly from its text


def test_the_reference_billing_section() -> None:
    assert Parsed(REFERENCE).billing == BillingSettings(
        default_plan="pro", timezone=ZoneInfo("UTC"), grace_period_ms=3_600_000,
        ingest_past_ms=3_600_000, ingest_future_ms=300_000)


def test_defaults() -> None:
    parsed = Parsed({"plans": [{"name": "p", "currency": "JPY", "cycle": "30s",
                                "prices": [{"meter": "peak_seats", "price_per_unit": 1}]}]})
    assert parsed.errors == []
    (price,) = parsed.plans[0].prices
    assert (price.free_threshold, price.unit_size) == (Decimal(0), Decimal(1))
    assert price.credits == CreditPolicy(Decimal(0), Decimal(1), Decimal(0))
    assert parsed.plans[0].fixed_price is None
    assert parsed.billing == BillingSettings(None, ZoneInfo("UTC"), 3_600_000, 3_600_000,
                                             300_000)


def plan_with(**changes: Any) -> dict[str, Any]:
    price = {"meter": "peak_seats", "price_per_unit": "2"}
    price.update(changes.pop("price", {}))
    return {"plans": [{"name": "p", "currency": "USD", "cycle": "monthly",
                       "prices": [price], **changes}]}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (plan_with(price={"meter": "nope"}), "plans[0].prices[0].meter: unknown meter 'nope'"),
        (plan_with(currency="usd"),
         "plans[0].currency: unknown currency 'usd' (an upper-case ISO 4217 code such as "
         "USD, EUR or JPY)"),
        (plan_with(currency="XYZ"),
         "plans[0].currency: unknown currency 'XYZ' (an upper-case ISO 4217 code such as "
         "USD, EUR or JPY)"),
        (plan_with(price={"price_per_unit": "-0.01"}),
         "plans[0].prices[0].price_per_unit: must be at least 0, got -0.01"),
        (plan_with(price={"price_per_unit": None}), "plans[0].prices[0].price_per_unit: required"),
        (plan_with(price={"unit_size": 0}),
         "plans[0].prices[0].unit_size: must be greater than 0, got 0"),
        (plan_with(price={"unit_size": "-1"}),
         "plans[0].prices[0].unit_size: must be greater than 0, got -1"),
        (plan_with(price={"free_threshold": -5}),
         "plans[0].prices[0].free_threshold: must be at least 0, got -5"),
        (plan_with(price={"credits": {"rollover_percent": 101}}),
         "plans[0].prices[0].credits.rollover_percent: must be at most 100, got 101"),
        (plan_with(price={"credits": {"units_per_credit": 0}}),
         "plans[0].prices[0].credits.units_per_credit: must be greater than 0, got 0"),
        (plan_with(price={"credits": {"per_cycle": -1}}),
         "plans[0].prices[0].credits.per_cycle: must be at least 0, got -1"),
        (plan_with(price={"credits": {"per_cylce": 5}}),
         "plans[0].prices[0].credits.per_cylce: unknown key"),
        (plan_with(fixed_price="-49"), "plans[0].fixed_price: must be at least 0, got -49"),
        (plan_with(cycle="fortnightly"),
         "plans[0].cycle: 'fortnightly' is not a cycle: use monthly, weekly, daily, hourly or "
         "a duration such as 30s"),
        (plan_with(cycle=None), "plans[0].cycle: required"),
        (plan_with(price={"price": "1"}), "plans[0].prices[0].price: unknown key"),
        (plan_with(name=""), "plans[0].name: must not be empty"),
    ],
)
def test_plan_errors_name_the_culprit(data: dict[str, Any], error: str) -> None:
    assert error in Parsed(data).errors


def test_a_meter_priced_twice_in_one_plan() -> None:
    data = plan_with()
    data["plans"][0]["prices"].append({"meter": "peak_seats", "price_per_unit": "3"})
    assert Parsed(data).errors == [
        "plans[0].prices[1].meter: meter 'peak_seats' is priced twice in this plan"]


def test_duplicate_plan_names() -> None:
    data = plan_with()
    data["plans"].append(data["plans"][0])
    parsed = Parsed(data)
    assert parsed.errors == ["plans[1].name: duplicate plan name 'p'"]
    assert len(parsed.plans) == 1


def test_a_fixed_price_finer_than_the_currency_is_a_warning() -> None:
    parsed = Parsed(plan_with(currency="JPY", fixed_price="49.5"))
    assert parsed.errors == []
    assert parsed.warnings == [
        "plans[0].fixed_price: 49.5 has more decimals than JPY has; statements round it half up"]


@pytest.mark.parametrize(
    ("billing", "error"),
    [
        ({"default_plan": "enterprise"}, "billing.default_plan: unknown plan 'enterprise'"),
        ({"timezone": "Mars/Olympus"},
         "billing.timezone: unknown time zone 'Mars/Olympus' (an IANA name such as UTC or "
         "Europe/Berlin)"),
        ({"timezone": "../../etc/passwd"},
         "billing.timezone: unknown time zone '../../etc/passwd' (an IANA name such as UTC or "
         "Europe/Berlin)"),
        ({"grace_period": "soon"},
         "billing.grace_period: 'soon' is not a duration such as 250ms, 30s, 5m or 1h"),
        ({"ingest_window": {"past": "1h", "futur": "5m"}},
         "billing.ingest_window.futur: unknown key"),
        ({"currency": "USD"}, "billing.currency: unknown key"),
    ],
)
def test_billing_errors(billing: dict[str, Any], error: str) -> None:
    assert error in Parsed({**plan_with(), "billing": billing}).errors


def test_a_timezone_is_read() -> None:
    parsed = Parsed({**plan_with(), "billing": {"timezone": "Asia/Kathmandu"}})
    assert parsed.billing.timezone == ZoneInfo("Asia/Kathmandu")


def test_a_grace_period_shorter_than_the_ingest_window_warns() -> None:
    parsed = Parsed({**plan_with(), "billing": {"grace_period": "30m",
                                                "ingest_window": {"past": "1h"}}})
    assert parsed.errors == []
    assert parsed.warnings == [
        "billing.grace_period: shorter than ingest_window.past: events ingested late for a "
        "period that is already final become adjustments on the next statement"]
    assert parsed.billing.grace_period_ms == 1_800_000
