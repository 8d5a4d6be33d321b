"""bench/proxy_instructions.py's report (the counting itself needs valgrind and minutes)."""

from __future__ import annotations

from bench.proxy_instructions import report


def test_report_has_a_row_per_target_and_ratios_paired_by_round() -> None:
    found = {
        "bare": [(400, 0), (500, 0)],
        "no rules": [(500, 0), (600, 0)],
        "this": [(600, 200), (700, 300)],
    }
    text = report(found, 1000)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == [
        "| bare | 450 (400 to 500) | 0 | 450 (400 to 500) |",
        "| no rules | 550 (500 to 600) | 0 | 550 (500 to 600) |",
        "| this | 650 (600 to 700) | 250 (200 to 300) | 900 (800 to 1,000) |",
    ]
    # per round: 500/400 = 1.25 and 600/500 = 1.2; 800/400 = 2.0 and 1000/500 = 2.0
    assert "no rules/bare, all threads: 1.225 (1.200 to 1.250)" in text
    assert text.endswith("this/bare, all threads: 2.000")  # one value: no range
    assert "this/before" not in text  # no --before tree counted


def test_report_compares_with_the_tree_before_when_counted() -> None:
    found = {"bare": [(100, 0)], "before": [(300, 100)], "this": [(200, 100)]}
    assert report(found, 10).endswith("this/before, all threads: 0.750")
