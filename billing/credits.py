"""The credit ledger, as pure functions.

Credits cover billed units above the free threshold, `units_per_credit` units each,
before anything is charged. A meter's credits in a period come from three kinds of
grant:
- per_cycle: the price's `credits.per_cycle`, renewed at every period start and
  expiring at its end;
- rollover: `rollover_percent` of the previous period's unused per_cycle credits
  (not rounded), usable in the next period only, so they never roll twice;
- grant: credits granted through the API; one covers every period that ends after
  `effective_at` and starts before `expires_at`, and its balance carries from period
  to period (it is not subject to rollover).

Burn order is total, so the result never depends on storage order: soonest expiry
first (no expiry last), then oldest creation, then kind (rollover, per_cycle, grant:
carried credits count as older than the period's own), then grant id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from billing.cycles import Period
from billing.money import EXACT, divide, divide_up
from billing.plans import CreditPolicy

GrantKind = Literal["per_cycle", "rollover", "grant"]
_KIND_ORDER: dict[GrantKind, int] = {"rollover": 0, "per_cycle": 1, "grant": 2}
_ZERO = Decimal(0)
_HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class CreditGrant:
    """Credits for one meter. `expires_at_ms` None: they never expire."""

    grant_id: str
    meter: str
    credits: Decimal
    effective_at_ms: int
    expires_at_ms: int | None
    created_at_ms: int
    kind: GrantKind = "grant"

    def covers(self, period: Period) -> bool:
        """True when the grant may be burned for usage of `period`."""
        return period.end_ms > self.effective_at_ms and (
            self.expires_at_ms is None or period.start_ms < self.expires_at_ms
        )

    def burn_order(self) -> tuple[bool, int, int, int, str]:
        """Sort key of the documented burn order."""
        never = self.expires_at_ms is None
        expiry = 0 if self.expires_at_ms is None else self.expires_at_ms
        return (never, expiry, self.created_at_ms, _KIND_ORDER[self.kind], self.grant_id)


@dataclass(frozen=True, slots=True)
class Balance:
    """What is left of a grant at the start of a period (always > 0)."""

    grant: CreditGrant
    remaining: Decimal


@dataclass(frozen=True, slots=True)
class CreditBurn:
    """Credits of one grant used by one statement line."""

    grant_id: str
    kind: GrantKind
    meter: str
    credits: Decimal


@dataclass(frozen=True, slots=True)
class Burned:
    """The outcome of covering units with credits."""

    credits_applied: Decimal
    units_covered: Decimal
    credits_remaining: Decimal
    burns: tuple[CreditBurn, ...]


@dataclass(frozen=True)
class CreditState:
    """A customer's credits as they stand at the start of a period.

    `grants`: the customer's API grants (any meter, any time; those that do not cover
    the period are ignored). `burned`: grant_id -> credits of that grant burned by
    earlier periods' statements. `carried`: meter -> rollover credits carried into this
    period (the previous statement's `rollover`).
    """

    grants: tuple[CreditGrant, ...] = ()
    burned: Mapping[str, Decimal] = field(default_factory=dict)
    carried: Mapping[str, Decimal] = field(default_factory=dict)


def cycle_grants(policy: CreditPolicy, meter: str, period: Period,
                 carried: Decimal) -> tuple[CreditGrant, ...]:
    """The period's own credits: its per-cycle renewal and the `carried` rollover."""
    grants = []
    own: tuple[tuple[GrantKind, Decimal], ...] = (
        ("per_cycle", policy.per_cycle), ("rollover", carried),
    )
    for kind, credits in own:
        if credits > 0:
            grants.append(CreditGrant(f"{kind}:{meter}:{period.start_ms}", meter, credits,
                                      period.start_ms, period.end_ms, period.start_ms, kind))
    return tuple(grants)


def available_for(period: Period, meter: str, grants: Iterable[CreditGrant],
                  burned_so_far: Mapping[str, Decimal]) -> tuple[Balance, ...]:
    """The positive balances usable for `meter` in `period`, in burn order.

    `burned_so_far` applies to API grants only: per-cycle and rollover grants belong to
    one period and start full.
    """
    balances = []
    for grant in grants:
        if grant.meter != meter or not grant.covers(period):
            continue
        burned = burned_so_far.get(grant.grant_id, _ZERO) if grant.kind == "grant" else _ZERO
        remaining = EXACT.subtract(grant.credits, burned)
        if remaining > 0:
            balances.append(Balance(grant, remaining))
    return tuple(sorted(balances, key=lambda balance: balance.grant.burn_order()))


def burn(units_to_cover: Decimal, balances: Sequence[Balance],
         units_per_credit: Decimal) -> Burned:
    """Cover up to `units_to_cover` billed units from `balances`, in their order.

    Burns whole balances before touching the next and never more than a balance
    holds. A need of units that `units_per_credit` does not divide is rounded up to
    the next credit fraction (see `money.divide_up`), never leaving a sliver billed.
    """
    needed = divide_up(units_to_cover, units_per_credit) if units_to_cover > 0 else _ZERO
    applied, burns = _ZERO, []
    for balance in balances:
        if applied >= needed:
            break
        take = min(balance.remaining, EXACT.subtract(needed, applied))
        grant = balance.grant
        burns.append(CreditBurn(grant.grant_id, grant.kind, grant.meter, take))
        applied = EXACT.add(applied, take)
    covered = min(units_to_cover, EXACT.multiply(applied, units_per_credit)) if burns else _ZERO
    total = exact_total(balance.remaining for balance in balances)
    return Burned(applied, covered, EXACT.subtract(total, applied), tuple(burns))


def rollover_out(policy: CreditPolicy, burns: Iterable[CreditBurn]) -> Decimal:
    """Credits the next period receives: `rollover_percent` of this period's unused
    per-cycle credits (rollover and granted credits never roll), not rounded."""
    used = exact_total(b.credits for b in burns if b.kind == "per_cycle")
    unused = EXACT.subtract(policy.per_cycle, used)
    return divide(EXACT.multiply(unused, policy.rollover_percent), _HUNDRED)


def exact_total(values: Iterable[Decimal]) -> Decimal:
    """The sum of `values`, exact (EXACT: never rounded)."""
    total = _ZERO
    for value in values:
        total = EXACT.add(total, value)
    return total
