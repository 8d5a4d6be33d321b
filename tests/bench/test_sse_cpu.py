"""bench/bench_sse_cpu.py: the streams it serves, the rule sets it compares, and one tiny
run end to end (its output's shape only: a test never judges timings)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench.bench_sse_cpu import anthropic_events, openai_events, rule_set
from rules.jsonselect import JsonPaths, Outcome

ROOT = Path(__file__).resolve().parents[2]


def _selected(rules: list[dict[str, object]]) -> list[str]:
    found = re.finditer(r"response\.json\.([\w.]+)", str([r["metadata"] for r in rules]))
    return sorted({match.group(1) for match in found})


def test_only_the_sse_rule_set_reads_response_json() -> None:
    sse_rules, _ = rule_set(parse_sse=True)
    plain_rules, _ = rule_set(parse_sse=False)
    assert _selected(sse_rules) and not _selected(plain_rules)
    assert [r["name"] for r in sse_rules] == [r["name"] for r in plain_rules]


def test_the_streams_hold_the_usage_the_examples_read() -> None:
    paths = JsonPaths(_selected(rule_set(parse_sse=True)[0]), 1_000_000)
    for events, found in (
        (openai_events(7), {"usage.completion_tokens": 7, "usage.prompt_tokens": 9}),
        (anthropic_events(7), {"usage.output_tokens": 7, "message.usage.input_tokens": 9}),
    ):
        tap = paths.tap("text/event-stream", None)
        for event in events:
            tap.feed(event)
        results = tap.finish(complete=True)
        for path, value in found.items():
            assert results[path].outcome is Outcome.FOUND and results[path].value == value


def test_a_tiny_run_prints_every_figure() -> None:
    args = ["--rounds", "2", "--exchanges", "2", "--events", "6", "--concurrency", "2"]
    args += ["--before", str(ROOT)]  # this very tree as the baseline: the lines are there
    run = subprocess.run(
        [sys.executable, "-m", "bench.bench_sse_cpu", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    number = r"-?[\d,]+\.\d\d( \(-?[\d,]+\.\d\d to -?[\d,]+\.\d\d\))?"
    for provider in ("openai", "anthropic"):
        assert re.search(rf"{provider}: plain {number} ms, sse {number} ms", out)
        assert re.search(rf"{provider}: per event plain {number} us, sse parsing adds", out)
        assert re.search(rf"{provider}: SSE parsing CPU overhead (n/a|[+-]\S+)", out)
        assert f"sse/{provider}.tokens: usage found in stored events: True" in out
        assert f"plain/{provider}.tokens: usage found in stored events: False" in out
        assert f"sse-before/{provider}.tokens: usage found in stored events: True" in out
        assert re.search(rf"{provider}: sse-before {number} ms, overhead ", out)
        assert re.search(rf"{provider}: CPU per exchange sse / sse-before (n/a|\d)", out)
    assert re.search(r"verdict: overhead < 5 %: (True|False|n/a)", out)
