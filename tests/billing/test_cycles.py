"""billing/cycles.py: calendar periods in a zone (DST, month lengths, midnight gaps) and
fixed periods on the epoch."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from billing.cycles import (
    Cycle,
    Period,
    bucket_ms,
    next_period,
    period_containing,
    periods_between,
)
from billing.render import iso

HOUR = 3_600_000
DAY = 24 * HOUR


def instant(zone: str, local: str) -> int:
    """ms of a local wall time such as "2026-03-29T12:00" (first pass if ambiguous)."""
    return int(datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


def span(cycle: str, zone: str, local: str) -> tuple[str, str, float]:
    tz = ZoneInfo(zone)
    period = period_containing(Cycle.parse(cycle), tz, instant(zone, local))
    return iso(period.start_ms, tz), iso(period.end_ms, tz), period.duration_ms / HOUR


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "cycle"),
    [
        ("monthly", Cycle(calendar="monthly")), ("weekly", Cycle(calendar="weekly")),
        ("daily", Cycle(calendar="daily")), ("hourly", Cycle(calendar="hourly")),
        ("30s", Cycle(fixed_ms=30_000)), ("2s", Cycle(fixed_ms=2_000)),
        ("1h", Cycle(fixed_ms=HOUR)), ("7d", Cycle(fixed_ms=7 * DAY)),
        ("250ms", Cycle(fixed_ms=250)), ("1.5s", Cycle(fixed_ms=1_500)),
    ],
)
def test_cycle_parse(text: str, cycle: Cycle) -> None:
    assert Cycle.parse(text) == cycle
    assert Cycle.parse(str(cycle)) == cycle


@pytest.mark.parametrize(
    ("text", "message"),
    [("0s", "longer than 0ms"), ("fortnightly", "not a cycle"), ("-5s", "not a cycle"),
     ("Monthly", "not a cycle"), ("", "not a cycle")],
)
def test_cycle_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Cycle.parse(text)


def test_cycle_is_one_thing_or_the_other() -> None:
    with pytest.raises(ValueError):
        Cycle()
    with pytest.raises(ValueError):
        Cycle(calendar="daily", fixed_ms=1000)


def test_period_is_half_open_and_never_empty() -> None:
    period = Period(10, 20)
    assert period.contains(10) and period.contains(19) and not period.contains(20)
    assert period.intersection(Period(15, 30)) == Period(15, 20)
    assert period.intersection(Period(20, 30)) is None
    assert sorted([Period(20, 30), Period(10, 20)]) == [Period(10, 20), Period(20, 30)]
    with pytest.raises(ValueError, match="empty"):
        Period(5, 5)


# ------------------------------------------------------------ calendar periods


@pytest.mark.parametrize(
    ("local", "start", "end", "hours"),
    [
        ("2026-01-15T08:00", "2026-01-01T00:00:00+00:00", "2026-02-01T00:00:00+00:00", 31 * 24),
        ("2026-02-28T23:59", "2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00", 28 * 24),
        ("2024-02-29T12:00", "2024-02-01T00:00:00+00:00", "2024-03-01T00:00:00+00:00", 29 * 24),
        ("2025-12-31T23:59", "2025-12-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00", 31 * 24),
        ("2026-04-01T00:00", "2026-04-01T00:00:00+00:00", "2026-05-01T00:00:00+00:00", 30 * 24),
    ],
)
def test_monthly_periods_follow_month_lengths(local: str, start: str, end: str,
                                              hours: int) -> None:
    assert span("monthly", "UTC", local) == (start, end, hours)


def test_december_is_followed_by_january() -> None:
    tz, monthly = ZoneInfo("UTC"), Cycle.parse("monthly")
    december = period_containing(monthly, tz, instant("UTC", "2025-12-10T00:00"))
    assert iso(next_period(monthly, tz, december).end_ms, tz) == "2026-02-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("zone", "cycle", "local", "start", "end", "hours"),
    [
        # spring forward: the day, week and month are one hour short
        ("Europe/Berlin", "daily", "2026-03-29T12:00",
         "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00", 23),
        ("Europe/Berlin", "weekly", "2026-03-29T12:00",
         "2026-03-23T00:00:00+01:00", "2026-03-30T00:00:00+02:00", 7 * 24 - 1),
        ("Europe/Berlin", "monthly", "2026-03-29T12:00",
         "2026-03-01T00:00:00+01:00", "2026-04-01T00:00:00+02:00", 31 * 24 - 1),
        ("Europe/Berlin", "hourly", "2026-03-29T03:30",
         "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00", 1),
        ("America/New_York", "daily", "2026-03-08T12:00",
         "2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00", 23),
        ("America/New_York", "weekly", "2026-03-08T12:00",
         "2026-03-02T00:00:00-05:00", "2026-03-09T00:00:00-04:00", 7 * 24 - 1),
        ("America/New_York", "monthly", "2026-03-08T12:00",
         "2026-03-01T00:00:00-05:00", "2026-04-01T00:00:00-04:00", 31 * 24 - 1),
        # fall back: one hour long
        ("Europe/Berlin", "daily", "2026-10-25T12:00",
         "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00", 25),
        ("Europe/Berlin", "weekly", "2026-10-25T12:00",
         "2026-10-19T00:00:00+02:00", "2026-10-26T00:00:00+01:00", 7 * 24 + 1),
        ("Europe/Berlin", "monthly", "2026-10-25T12:00",
         "2026-10-01T00:00:00+02:00", "2026-11-01T00:00:00+01:00", 31 * 24 + 1),
        ("America/New_York", "daily", "2026-11-01T12:00",
         "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00", 25),
        ("America/New_York", "weekly", "2026-11-01T12:00",
         "2026-10-26T00:00:00-04:00", "2026-11-02T00:00:00-05:00", 7 * 24 + 1),
        ("America/New_York", "monthly", "2026-11-01T12:00",
         "2026-11-01T00:00:00-04:00", "2026-12-01T00:00:00-05:00", 30 * 24 + 1),
        # Asia/Kathmandu is +05:45: local hours start at a quarter past a UTC hour
        ("Asia/Kathmandu", "daily", "2026-01-01T12:00",
         "2026-01-01T00:00:00+05:45", "2026-01-02T00:00:00+05:45", 24),
        ("Asia/Kathmandu", "hourly", "2026-01-01T12:59",
         "2026-01-01T12:00:00+05:45", "2026-01-01T13:00:00+05:45", 1),
        # a midnight that does not exist starts the day at the first instant after it
        ("America/Santiago", "daily", "2022-09-11T12:00",
         "2022-09-11T01:00:00-03:00", "2022-09-12T00:00:00-03:00", 23),
        ("America/Santiago", "daily", "2022-09-10T12:00",
         "2022-09-10T00:00:00-04:00", "2022-09-11T01:00:00-03:00", 24),
        ("America/Havana", "daily", "2025-03-09T12:00",
         "2025-03-09T01:00:00-04:00", "2025-03-10T00:00:00-04:00", 23),
        # an ambiguous midnight takes its first pass
        ("America/Havana", "daily", "2025-11-02T12:00",
         "2025-11-02T00:00:00-04:00", "2025-11-03T00:00:00-05:00", 25),
        # Lord Howe shifts by 30 minutes: the skipped 02:00 starts at the shift
        ("Australia/Lord_Howe", "hourly", "2025-10-05T01:30",
         "2025-10-05T01:00:00+10:30", "2025-10-05T02:30:00+11:00", 1),
        ("Australia/Lord_Howe", "hourly", "2025-10-05T02:45",
         "2025-10-05T02:30:00+11:00", "2025-10-05T03:00:00+11:00", 0.5),
        ("Australia/Lord_Howe", "hourly", "2026-04-05T01:15",
         "2026-04-05T01:00:00+11:00", "2026-04-05T02:00:00+10:30", 1.5),
    ],
)
def test_calendar_periods_in_a_zone(zone: str, cycle: str, local: str, start: str, end: str,
                                    hours: float) -> None:
    assert span(cycle, zone, local) == (start, end, hours)


@pytest.mark.parametrize(
    ("zone", "local_midnight", "hours"),
    [("Europe/Berlin", "2026-10-25T00:00", 25), ("Europe/Berlin", "2026-03-29T00:00", 23),
     ("America/New_York", "2026-11-01T00:00", 25), ("America/New_York", "2026-03-08T00:00", 23),
     ("Europe/Berlin", "2026-06-01T00:00", 24)],
)
def test_hourly_periods_are_real_hours_on_dst_days(zone: str, local_midnight: str,
                                                    hours: int) -> None:
    tz, hourly = ZoneInfo(zone), Cycle.parse("hourly")
    start = instant(zone, local_midnight)
    day = period_containing(Cycle.parse("daily"), tz, start)
    periods = list(periods_between(hourly, tz, day.start_ms, day.end_ms))
    assert len(periods) == hours
    assert all(p.duration_ms == HOUR for p in periods)


def test_a_backward_shift_by_two_hours_repeats_two_hourly_periods() -> None:
    # America/Argentina/Catamarca went from -02 to -04 at 24:00 on 1991-03-02.
    tz, hourly = ZoneInfo("America/Argentina/Catamarca"), Cycle.parse("hourly")
    first = instant("America/Argentina/Catamarca", "1991-03-02T22:00")
    periods = list(periods_between(hourly, tz, first, first + 4 * HOUR))
    assert [iso(p.start_ms, tz) for p in periods] == [
        "1991-03-02T22:00:00-02:00", "1991-03-02T23:00:00-02:00",
        "1991-03-02T22:00:00-04:00", "1991-03-02T23:00:00-04:00",
    ]


def test_a_backward_shift_across_midnight_keeps_every_instant_in_its_period() -> None:
    # America/Goose_Bay went back from 00:01 to 23:01 of the previous day (1987-10-25):
    # the repeated 23:01-24:00 belongs to the day that started at the first midnight.
    tz, daily = ZoneInfo("America/Goose_Bay"), Cycle.parse("daily")
    second_pass = datetime.fromisoformat("1987-10-24T23:30").replace(tzinfo=tz, fold=1)
    at = int(second_pass.timestamp() * 1000)
    period = period_containing(daily, tz, at)
    assert period.contains(at)
    assert (iso(period.start_ms, tz), iso(period.end_ms, tz)) == (
        "1987-10-25T00:00:00-03:00", "1987-10-26T00:00:00-04:00")


# -------------------------------------------------------------- fixed periods


@pytest.mark.parametrize(
    ("cycle", "at", "start"),
    [("30s", 1_000_000_000_123, 999_999_990_000), ("30s", 30_000, 30_000),
     ("30s", 29_999, 0), ("2s", 1_777, 0), ("30s", -1, -30_000),
     ("7d", 7 * DAY + 5, 7 * DAY)],
)
def test_fixed_periods_are_aligned_to_the_epoch(cycle: str, at: int, start: int) -> None:
    parsed = Cycle.parse(cycle)
    for zone in ("UTC", "Asia/Kathmandu"):  # the zone plays no part
        assert period_containing(parsed, ZoneInfo(zone), at) == Period(
            start, start + parsed.fixed_ms)


def test_periods_between_lists_the_overlapping_periods() -> None:
    tz, monthly = ZoneInfo("UTC"), Cycle.parse("monthly")
    year = list(periods_between(monthly, tz, instant("UTC", "2026-01-01T00:00"),
                                instant("UTC", "2027-01-01T00:00")))
    assert len(year) == 12
    assert list(periods_between(Cycle.parse("30s"), tz, 10_000, 70_000)) == [
        Period(0, 30_000), Period(30_000, 60_000), Period(60_000, 90_000)]
    assert list(periods_between(monthly, tz, 5, 5)) == []


# ---------------------------------------------------------------- buckets


@pytest.mark.parametrize(
    ("cycles", "zone", "size"),
    [
        (["monthly"], "UTC", HOUR), ([], "UTC", HOUR), (["30s"], "UTC", 30_000),
        (["2s", "30s", "monthly"], "UTC", 2_000), (["90m"], "UTC", HOUR // 2),
        (["monthly"], "Europe/Berlin", 900_000), (["7d", "daily"], "Asia/Kathmandu", 900_000),
        (["250ms"], "Europe/Berlin", 250), (["hourly"], "Etc/UTC", HOUR),
    ],
)
def test_bucket_ms(cycles: list[str], zone: str, size: int) -> None:
    assert bucket_ms([Cycle.parse(c) for c in cycles], ZoneInfo(zone)) == size


# ------------------------------------------------------------------ properties

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "America/Santiago", "America/Havana",
         "Asia/Kathmandu", "Australia/Lord_Howe", "America/Goose_Bay", "Pacific/Apia"]
CYCLES = ["monthly", "weekly", "daily", "hourly", "30s", "7d", "90m"]


@settings(deadline=None)
@given(st.sampled_from(ZONES), st.sampled_from(CYCLES),
       st.integers(min_value=0, max_value=2_100_000_000_000))
def test_periods_tile_time_and_contain_their_instant(zone: str, cycle: str, at: int) -> None:
    tz, parsed = ZoneInfo(zone), Cycle.parse(cycle)
    period = period_containing(parsed, tz, at)
    assert period.contains(at)
    following = next_period(parsed, tz, period)
    assert following.start_ms == period.end_ms
    assert period_containing(parsed, tz, period.start_ms) == period
    assert period_containing(parsed, tz, period.end_ms - 1) == period


@settings(deadline=None)
@given(st.sampled_from(ZONES), st.sampled_from(CYCLES),
       st.integers(min_value=315_532_800_000, max_value=2_100_000_000_000))
def test_period_boundaries_are_bucket_boundaries(zone: str, cycle: str, at: int) -> None:
    # Since 1980 every offset in these zones is a whole quarter hour.
    tz, parsed = ZoneInfo(zone), Cycle.parse(cycle)
    size = bucket_ms([parsed], tz)
    period = period_containing(parsed, tz, at)
    assert period.start_ms % size == 0 and period.end_ms % size == 0
