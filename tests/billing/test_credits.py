"""billing/credits.py: coverage, the total burn order, burning, renewal and rollover."""

from __future__ import annotations

import random
from collections import defaultdict
from decimal import Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.credits import (
    Balance,
    CreditBurn,
    CreditGrant,
    available_for,
    burn,
    cycle_grants,
    rollover_out,
)
from billing.cycles import Period
from billing.money import EXACT
from billing.plans import CreditPolicy

D = Decimal
PERIOD = Period(100, 200)


def grant(grant_id: str, credits: str = "10", *, effective: int = 0, expires: int | None = None,
          created: int = 0, meter: str = "m") -> CreditGrant:
    return CreditGrant(grant_id, meter, D(credits), effective, expires, created)


@pytest.mark.parametrize(
    ("effective", "expires", "covers"),
    [(0, None, True), (199, None, True), (200, None, False), (0, 100, False),
     (0, 101, True), (150, 160, True), (100, 200, True), (250, 300, False)],
)
def test_a_grant_covers_periods_that_end_after_effective_and_start_before_expiry(
    effective: int, expires: int | None, covers: bool
) -> None:
    assert grant("g", effective=effective, expires=expires).covers(PERIOD) is covers


def test_the_burn_order_is_total_and_documented() -> None:
    own = cycle_grants(CreditPolicy(D(5)), "m", PERIOD, carried=D(3))
    grants = [
        grant("never-old", created=1),
        grant("late-expiry", expires=900, created=0),
        grant("b-same", expires=300, created=5),
        grant("a-same", expires=300, created=5),
        grant("older", expires=300, created=4),
        grant("soonest", expires=150, created=50),
        grant("never-new", created=2),
        *own,
    ]
    # expiry 150, then the period's own (200: carried before renewed), then 300 by
    # creation and id, then 900, then never by creation
    expected = ["soonest", "rollover:m:100", "per_cycle:m:100", "older", "a-same", "b-same",
                "late-expiry", "never-old", "never-new"]
    for seed in range(20):
        random.Random(seed).shuffle(grants)
        balances = available_for(PERIOD, "m", grants, {})
        assert [b.grant.grant_id for b in balances] == expected


def test_available_for_keeps_positive_balances_of_this_meter_in_this_period() -> None:
    grants = [
        grant("half-used", "10"), grant("used-up", "10"), grant("other-meter", meter="x"),
        grant("expired", expires=100), grant("future", effective=200),
        *cycle_grants(CreditPolicy(D(5)), "m", PERIOD, carried=D(0)),
    ]
    # earlier burns count for API grants only; the period's own credits start full
    burned = {"half-used": D(4), "used-up": D(10), "per_cycle:m:100": D(5)}
    balances = available_for(PERIOD, "m", grants, burned)
    assert [(b.grant.grant_id, b.remaining) for b in balances] == [
        ("per_cycle:m:100", D(5)), ("half-used", D(6))]


def test_cycle_grants_renew_per_period_and_expire_at_its_end() -> None:
    policy = CreditPolicy(D(50000))
    (per_cycle,) = cycle_grants(policy, "tokens", PERIOD, carried=D(0))
    assert per_cycle == CreditGrant("per_cycle:tokens:100", "tokens", D(50000), 100, 200, 100,
                                    "per_cycle")
    assert cycle_grants(CreditPolicy(), "tokens", PERIOD, carried=D(0)) == ()
    (rollover,) = cycle_grants(CreditPolicy(), "tokens", PERIOD, carried=D("2.5"))
    assert (rollover.kind, rollover.credits, rollover.expires_at_ms) == ("rollover", D("2.5"), 200)


def balances_of(*remaining: str) -> tuple[Balance, ...]:
    return tuple(Balance(grant(f"g{i}", r), D(r)) for i, r in enumerate(remaining))


@pytest.mark.parametrize(
    ("units", "remaining", "per_credit", "applied", "covered", "left", "burns"),
    [
        ("30", ["10", "50"], "1", "30", "30", "30", [("g0", "10"), ("g1", "20")]),
        ("100", ["10"], "1", "10", "10", "0", [("g0", "10")]),
        ("2500", ["2", "9"], "1000", "2.5", "2500", "8.5", [("g0", "2"), ("g1", "0.5")]),
        ("1500", ["1"], "1000", "1", "1000", "0", [("g0", "1")]),
        ("0", ["10"], "1", "0", "0", "10", []),
        ("5", [], "1", "0", "0", "0", []),
        ("0.25", ["1"], "1", "0.25", "0.25", "0.75", [("g0", "0.25")]),
    ],
)
def test_burn(units: str, remaining: list[str], per_credit: str, applied: str, covered: str,
              left: str, burns: list[tuple[str, str]]) -> None:
    burned = burn(D(units), balances_of(*remaining), D(per_credit))
    assert (burned.credits_applied, burned.units_covered, burned.credits_remaining) == (
        D(applied), D(covered), D(left))
    assert [(b.grant_id, b.credits) for b in burned.burns] == [(g, D(c)) for g, c in burns]


def test_units_that_a_credit_does_not_divide_are_fully_covered() -> None:
    burned = burn(D(10), balances_of("5"), D(3))
    assert burned.units_covered == 10  # not 9.999...
    assert D(3) < burned.credits_applied < D("3.3334")
    assert burned.credits_remaining == EXACT.subtract(D(5), burned.credits_applied)


@pytest.mark.parametrize(
    ("per_cycle", "percent", "burns", "carried"),
    [
        ("100", "50", [("per_cycle", "40")], "30"),
        ("100", "0", [("per_cycle", "40")], "0"),
        ("100", "100", [], "100"),
        ("100", "50", [("per_cycle", "100")], "0"),
        # rollover and granted credits never roll: only the per-cycle ones count
        ("100", "50", [("rollover", "70"), ("grant", "5"), ("per_cycle", "40")], "30"),
        # not rounded
        ("60", "33.3333", [], "19.99998"),
    ],
)
def test_rollover_out(per_cycle: str, percent: str, burns: list[tuple[str, str]],
                      carried: str) -> None:
    policy = CreditPolicy(D(per_cycle), D(1), D(percent))
    used = [CreditBurn(f"{kind}:m:0", kind, "m", D(c))  # type: ignore[arg-type]
            for kind, c in burns]
    assert rollover_out(policy, used) == D(carried)


# ---------------------------------------------------------------- properties

grants_strategy = st.lists(
    st.builds(
        lambda i, credits, effective, length: CreditGrant(
            f"g{i}", "m", credits, effective, None if length is None else effective + length,
            effective),
        st.integers(0, 1000),
        st.decimals(min_value=0, max_value=100, places=2),
        st.integers(0, 800),
        st.one_of(st.none(), st.integers(1, 500)),
    ),
    max_size=6,
    unique_by=lambda g: g.grant_id,
)


@settings(deadline=None)
@given(grants_strategy,
       st.lists(st.decimals(min_value=0, max_value=300, places=3), min_size=1, max_size=8),
       st.decimals(min_value=0, max_value=50, places=1),
       st.decimals(min_value=0, max_value=100, places=1),
       st.sampled_from([D(1), D("0.5"), D(3), D(1000)]))
def test_credits_never_go_negative_or_exceed_what_was_granted(
    grants: list[CreditGrant], usage: list[Decimal], per_cycle: Decimal, percent: Decimal,
    per_credit: Decimal,
) -> None:
    policy = CreditPolicy(per_cycle, per_credit, percent)
    burned: dict[str, Decimal] = defaultdict(Decimal)
    carried = D(0)
    for index, units in enumerate(usage):
        period = Period(index * 100, (index + 1) * 100)
        own = cycle_grants(policy, "m", period, carried)
        balances = available_for(period, "m", [*own, *grants], burned)
        with localcontext(EXACT):  # the precision the ledger computes in, not the default 28
            available = sum((b.remaining for b in balances), D(0))
        result = burn(units, balances, per_credit)
        assert all(b.remaining > 0 for b in balances)
        assert all(b.credits > 0 for b in result.burns)
        assert D(0) <= result.credits_applied <= available
        assert result.credits_remaining >= 0
        assert result.units_covered <= units
        # as much as possible is covered: either all units, or every credit is used
        assert result.units_covered == units or result.credits_remaining == 0
        for spent in result.burns:
            if spent.kind == "grant":
                burned[spent.grant_id] += spent.credits
        carried = rollover_out(policy, result.burns)
        assert D(0) <= carried <= per_cycle
    for g in grants:
        assert burned[g.grant_id] <= g.credits
