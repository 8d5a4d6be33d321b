"""Summaries of repeated measurements: medians, spreads and paired ratios.

Rounds are interleaved (A B C D A B C D ...), so round i of every target saw the same
machine state; ratios and differences are therefore taken per round, then summarised.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """The median of some values and their range (min, max)."""

    median: float
    low: float
    high: float

    def render(self, digits: int = 2, signed: bool = False) -> str:
        """Text such as `1.23 (1.10 to 1.40)`, or `1.23` when all values are equal (or
        there was one round); `signed` puts + before non-negative numbers."""
        sign = "+" if signed else ""
        mid = f"{self.median:{sign},.{digits}f}"
        if math.isclose(self.low, self.high):
            return mid
        return f"{mid} ({self.low:{sign},.{digits}f} to {self.high:{sign},.{digits}f})"


def spread(values: Sequence[float]) -> Spread:
    """Median and range of `values`; ValueError when there are none."""
    if not values:
        raise ValueError("no values to summarise")
    return Spread(statistics.median(values), min(values), max(values))


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> Spread:
    """Spread of the per-round ratios n[i] / d[i]; ValueError on unequal lengths or d == 0."""
    _check_pairs(numerators, denominators)
    if any(d == 0 for d in denominators):
        raise ValueError("a denominator is zero")
    return spread([n / d for n, d in zip(numerators, denominators, strict=True)])


def paired_differences(minuends: Sequence[float], subtrahends: Sequence[float]) -> Spread:
    """Spread of the per-round differences a[i] - b[i]; ValueError on unequal lengths."""
    _check_pairs(minuends, subtrahends)
    return spread([a - b for a, b in zip(minuends, subtrahends, strict=True)])


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100); ValueError when there are no values."""
    if not values:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    ordered = sorted(values)
    return ordered[math.ceil(q / 100 * len(ordered)) - 1]


def _check_pairs(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"unpaired rounds: {len(a)} and {len(b)}")
