"""bench/report.py: the markdown table and the machine lines."""

from __future__ import annotations

from bench.report import COLUMNS, Row, machine_lines, render_table, verdict


def test_table_has_a_header_a_rule_and_one_line_per_row() -> None:
    rows = [Row("throughput", bare="100", meterproxy="95", result="0.95 x bare")]
    lines = render_table(rows).splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    assert lines[1] == "| --- | --- | --- | --- | --- | --- | --- | --- |"
    assert lines[2] == "| throughput | - | 100 | - | 95 | 0.95 x bare | - | - |"


def test_a_pipe_inside_a_cell_cannot_split_the_row() -> None:
    line = render_table([Row("a|b")]).splitlines()[2]
    assert line.startswith("| a\\|b |")
    assert line.replace("\\|", "").count("|") == len(COLUMNS) + 1


def test_verdicts_read_differently() -> None:
    assert verdict(True) == "met"
    assert verdict(False) == "**missed**"


def test_machine_lines_name_the_generator_and_nginx() -> None:
    text = "\n".join(machine_lines("wrk", "nginx/1.22.1"))
    assert "load generator: wrk" in text
    assert "nginx: nginx/1.22.1" in text
    assert "aiohttp " in text and "cores" in text
