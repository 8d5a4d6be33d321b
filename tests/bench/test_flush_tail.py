"""bench/flush_tail.py's reading of samples against flushes (hand-made timelines)."""

from __future__ import annotations

import pytest

from bench.flush_tail import Sample, own_seconds, tail


def test_slow_requests_that_overlap_flushes_are_told_apart_from_the_rest() -> None:
    # 100 requests of 1 ms, one every 10 ms; flushes at 0-5 ms of every 50 ms window.
    flushes = [(t / 1000, (t + 5) / 1000) for t in range(0, 1000, 50)]
    samples = [Sample(t / 1000, 0.001, 0.00005) for t in range(3, 1000, 10)]
    # The two slowest (5 ms each) start inside a flush: at 2 ms and at 851 ms.
    samples[0] = Sample(0.002, 0.005, 0.00007)
    samples[85] = Sample(0.851, 0.005, 0.00009)
    found = tail(samples, flushes)
    assert found.p50_us == pytest.approx(1000)
    assert found.p99_us == pytest.approx(5000)
    assert found.slow_overlapping == 1.0
    # Requests start at 3, 13, 23, ... ms: those starting 3 ms into a 50 ms window
    # overlap its flush (0-5 ms), i.e. 20 of 100, the two slow ones included.
    assert found.all_overlapping == pytest.approx(0.20)
    assert found.slow_own_us == pytest.approx(80)
    assert found.other_own_us == pytest.approx(50)


def test_a_request_between_flushes_does_not_overlap() -> None:
    flushes = [(0.0, 0.005), (0.050, 0.055)]
    found = tail([Sample(0.010, 0.030, 0.0), Sample(0.004, 0.002, 0.0)], flushes)
    assert found.slow_overlapping == 0.0  # the slowest (30 ms) sits between the flushes
    assert found.all_overlapping == 0.5


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("meterproxy;dur=0.250", 0.00025), ("cache;dur=3, meterproxy;dur=1.5", 0.0015),
     (None, 0.0), ("upstream;dur=9", 0.0)],
)
def test_own_time_is_read_from_server_timing(header: str | None, seconds: float) -> None:
    assert own_seconds(header) == pytest.approx(seconds)
