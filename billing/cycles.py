"""Billing periods: calendar cycles in billing.timezone, fixed cycles on the Unix epoch.

A period is half-open, `[start_ms, end_ms)`, in integer milliseconds since the epoch.
Consecutive periods tile time: the next period starts where the previous one ends.

Calendar periods follow the local clock of the billing time zone: monthly starts on
the 1st at 00:00, weekly on Monday 00:00, daily at 00:00, hourly at every instant the
local clock shows HH:00 (a repeated hour after a backward shift is two periods). So a
day is 23 or 25 hours long on DST days. A local start time that does not exist (zones
that shift at midnight, e.g. America/Santiago) starts at the first instant that exists
after it; an ambiguous daily, weekly or monthly start takes its first (fold=0) instant.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import reduce
from math import gcd
from typing import Literal, get_args
from zoneinfo import ZoneInfo

from billing.settings import parse_duration_ms

CalendarUnit = Literal["monthly", "weekly", "daily", "hourly"]
CALENDAR_UNITS: tuple[CalendarUnit, ...] = get_args(CalendarUnit)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HOUR_MS = 3_600_000
_QUARTER_HOUR_MS = 900_000
_UTC_KEYS = frozenset(
    {"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu",
     "GMT", "Etc/GMT", "Etc/Greenwich", "Greenwich"}
)
_UNITS_MS = (("d", 86_400_000), ("h", _HOUR_MS), ("m", 60_000), ("s", 1000))


@dataclass(frozen=True, slots=True)
class Cycle:
    """How long a plan's periods are: a calendar unit, or a fixed duration in ms."""

    calendar: CalendarUnit | None = None
    fixed_ms: int = 0

    def __post_init__(self) -> None:
        if (self.calendar is None) == (self.fixed_ms == 0) or self.fixed_ms < 0:
            raise ValueError("a cycle is either a calendar unit or a positive duration")

    @classmethod
    def parse(cls, text: str) -> Cycle:
        """Read "monthly", "weekly", "daily", "hourly" or a duration such as "30s".

        Raises ValueError naming the accepted forms.
        """
        for unit in CALENDAR_UNITS:
            if text == unit:
                return cls(calendar=unit)
        try:
            ms = parse_duration_ms(text)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a cycle: use monthly, weekly, daily, hourly "
                "or a duration such as 30s"
            ) from None
        if ms == 0:
            raise ValueError("a cycle must be longer than 0ms")
        return cls(fixed_ms=ms)

    def __str__(self) -> str:
        if self.calendar is not None:
            return self.calendar
        for suffix, size in _UNITS_MS:
            if self.fixed_ms % size == 0:
                return f"{self.fixed_ms // size}{suffix}"
        return f"{self.fixed_ms}ms"


@dataclass(frozen=True, slots=True, order=True)
class Period:
    """The half-open span `[start_ms, end_ms)`; ordered by start. Raises ValueError if empty."""

    start_ms: int
    end_ms: int

    def __post_init__(self) -> None:
        if self.end_ms <= self.start_ms:
            raise ValueError(f"empty period [{self.start_ms}, {self.end_ms})")

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms

    def contains(self, at_ms: int) -> bool:
        return self.start_ms <= at_ms < self.end_ms

    def intersection(self, other: Period) -> Period | None:
        """The span both periods cover; None when they do not overlap."""
        start, end = max(self.start_ms, other.start_ms), min(self.end_ms, other.end_ms)
        return Period(start, end) if start < end else None


def period_containing(cycle: Cycle, tz: ZoneInfo, at_ms: int) -> Period:
    """The period of `cycle` that contains the instant `at_ms` (tz matters for calendars)."""
    if cycle.calendar is None:
        start = at_ms - at_ms % cycle.fixed_ms  # floor, also before the epoch
        return Period(start, start + cycle.fixed_ms)
    period = _calendar_period(cycle.calendar, tz, at_ms)
    # A backward shift across a period start could leave `at_ms` after the end its
    # wall date suggests; moving on keeps the containment promise in such zones.
    while period.end_ms <= at_ms:
        period = _calendar_period(cycle.calendar, tz, period.end_ms)
    return period


def next_period(cycle: Cycle, tz: ZoneInfo, period: Period) -> Period:
    """The period that starts where `period` ends."""
    return period_containing(cycle, tz, period.end_ms)


def periods_between(cycle: Cycle, tz: ZoneInfo, start_ms: int, end_ms: int) -> Iterator[Period]:
    """The periods that overlap `[start_ms, end_ms)`, in order; none when it is empty."""
    if start_ms >= end_ms:
        return
    period = period_containing(cycle, tz, start_ms)
    while period.start_ms < end_ms:
        yield period
        period = next_period(cycle, tz, period)


def bucket_ms(cycles: Iterable[Cycle], tz: ZoneInfo) -> int:
    """The largest aggregate bucket (ms, aligned to the epoch) whose boundaries include
    every period boundary of every cycle.

    Calendar boundaries fall on local hours. In UTC these are whole UTC hours; in other
    zones we assume (as tzdata holds for every offset in use since 1980) that UTC offsets
    are whole quarter hours (Asia/Kathmandu is +05:45), so local hours fall on UTC
    quarter hours. Fixed durations bring their own gcd.
    """
    base = _HOUR_MS if tz.key in _UTC_KEYS else _QUARTER_HOUR_MS
    return reduce(gcd, (c.fixed_ms for c in cycles if c.calendar is None), base)


# ------------------------------------------------------------- calendar periods


def _calendar_period(unit: CalendarUnit, tz: ZoneInfo, at_ms: int) -> Period:
    if unit == "hourly":
        start = _hour_start(tz, at_ms)
        return Period(start, _hour_end(tz, start))
    wall = _floor(unit, _naive(_local(at_ms, tz)))
    return Period(_instant(wall, tz), _instant(_step(unit, wall), tz))


# Hours are found on the UTC line rather than on the wall clock: a backward shift by
# two hours (America/Argentina/Catamarca, 1991) repeats two wall hours, and each pass
# of each one is a period of its own. A boundary is an instant at which the local clock
# shows HH:00, or the shift that skipped an HH:00.


def _hour_start(tz: ZoneInfo, at_ms: int) -> int:
    """The latest hour boundary at or before `at_ms`."""
    offset = _offset_ms(at_ms, tz)
    start = at_ms - (at_ms + offset) % _HOUR_MS
    if _offset_ms(start, tz) == offset:
        return start
    shift = _shift_after(start, at_ms, tz)
    return shift if _is_hour_boundary(shift, tz) else _hour_start(tz, shift - 1)


def _hour_end(tz: ZoneInfo, start_ms: int) -> int:
    """The first hour boundary after `start_ms`."""
    offset = _offset_ms(start_ms, tz)
    end = start_ms + _HOUR_MS - (start_ms + offset) % _HOUR_MS
    if _offset_ms(end, tz) == offset:
        return end
    shift = _shift_after(start_ms, end, tz)
    return shift if _is_hour_boundary(shift, tz) else _hour_end(tz, shift)


def _is_hour_boundary(at_ms: int, tz: ZoneInfo) -> bool:
    wall = at_ms + _offset_ms(at_ms, tz)
    wall_before = at_ms - 1 + _offset_ms(at_ms - 1, tz)
    return wall % _HOUR_MS == 0 or wall - wall % _HOUR_MS > wall_before


def _shift_after(low_ms: int, high_ms: int, tz: ZoneInfo) -> int:
    """The first instant in (low, high] whose UTC offset differs from low's (one exists)."""
    offset = _offset_ms(low_ms, tz)
    while high_ms - low_ms > 1:
        middle = (low_ms + high_ms) // 2
        if _offset_ms(middle, tz) == offset:
            low_ms = middle
        else:
            high_ms = middle
    return high_ms


# ------------------------------------------------- days, weeks and months on the wall


def _floor(unit: CalendarUnit, wall: datetime) -> datetime:
    """The local wall time at which the day, week or month containing `wall` starts."""
    day = wall.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "daily":
        return day
    if unit == "weekly":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _step(unit: CalendarUnit, start: datetime) -> datetime:
    """The local wall time at which the unit after the one starting at `start` starts."""
    if unit == "monthly":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start + timedelta(days=7 if unit == "weekly" else 1)


def _instant(wall: datetime, tz: ZoneInfo) -> int:
    """The instant (ms) a naive local wall time names: the first pass of an ambiguous
    one; for a wall time that does not exist, the first instant after it."""
    ms = _ms(wall.replace(tzinfo=tz, fold=0))
    if _naive(_local(ms, tz)) == wall:
        return ms
    # In a gap, fold=0 reads the wall time with the offset from before the shift (an
    # instant after it) and fold=1 with the offset after (an instant before): bisect.
    before, after = _ms(wall.replace(tzinfo=tz, fold=1)), ms
    while after - before > 1:
        middle = (before + after) // 2
        if _naive(_local(middle, tz)) >= wall:
            after = middle
        else:
            before = middle
    return after


def _local(ms: int, tz: ZoneInfo) -> datetime:
    return (_EPOCH + timedelta(milliseconds=ms)).astimezone(tz)


def _offset_ms(at_ms: int, tz: ZoneInfo) -> int:
    offset = _local(at_ms, tz).utcoffset()
    assert offset is not None  # a ZoneInfo always knows its offset
    return offset // timedelta(milliseconds=1)


def _naive(local: datetime) -> datetime:
    return local.replace(tzinfo=None, fold=0)


def _ms(aware: datetime) -> int:
    delta = aware - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
