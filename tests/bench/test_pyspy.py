"""bench/pyspy.py: ranking py-spy's raw stacks by own time."""

from __future__ import annotations

import pytest

from bench.pyspy import Frame, render, top_frames

RAW = """\
main (a.py:1);loop (a.py:5);handle (b.py:3);write (c.py:9) 6
main (a.py:1);loop (a.py:5);handle (b.py:3) 2
main (a.py:1);loop (a.py:5);store (d.py:1);write (c.py:9) 1
worker (e.py:2) 1
garbage line without a count
"""


def test_own_time_counts_the_innermost_frame_and_total_any_position() -> None:
    frames = top_frames(RAW, 3)
    assert frames == [
        Frame("write (c.py:9)", 0.7, 0.7),
        Frame("handle (b.py:3)", 0.2, 0.8),
        Frame("worker (e.py:2)", 0.1, 0.1),
    ]


def test_a_recursive_frame_counts_once_per_sample_in_total() -> None:
    frames = top_frames("f (x.py:1);f (x.py:1) 2\ng (x.py:2) 2\n", 2)
    assert frames == [Frame("f (x.py:1)", 0.5, 0.5), Frame("g (x.py:2)", 0.5, 0.5)]


@pytest.mark.parametrize("n", [0, 1, 2])
def test_at_most_n_frames(n: int) -> None:
    assert len(top_frames(RAW, n)) == n


def test_ties_are_ordered_by_name() -> None:
    frames = top_frames("b (x.py:1) 1\na (x.py:1) 1\n", 2)
    assert [f.name for f in frames] == ["a (x.py:1)", "b (x.py:1)"]


def test_render_is_a_markdown_table_with_percentages() -> None:
    text = render([Frame("write (c.py:9)", 0.7, 0.75)])
    assert text.splitlines() == [
        "| own | total | frame |",
        "| ---: | ---: | --- |",
        "| 70.0% | 75.0% | `write (c.py:9)` |",
    ]
