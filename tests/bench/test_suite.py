"""bench/suite.py plans restricted to some phases and its fresh-server ingest rows;
bench/floor.py's variant configurations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bench import suite
from bench.calls import Run
from bench.floor import VARIANTS, latency, summarise, variant_config
from bench.ingest import Ingested, Served
from bench.loadgen import LoadResult
from bench.suite import DEFAULT_PHASES, FULL, QUICK, Outcome, _fresh_ingest, fresh_ingest_row
from proxy.config import load_config


def test_make_bench_runs_every_phase_but_the_floor() -> None:
    assert FULL.phases == QUICK.phases == DEFAULT_PHASES
    assert "floor" not in DEFAULT_PHASES and "throughput" in DEFAULT_PHASES


def test_only_keeps_the_named_phases_and_sets_the_rounds() -> None:
    plan = FULL.only(frozenset({"throughput", "floor"}), rounds=5)
    assert plan.phases == {"throughput", "floor"}
    assert (plan.rounds, plan.sse_rounds, plan.seconds) == (5, 5, FULL.seconds)
    assert plan.name == "full, only throughput, floor"
    assert FULL.only(frozenset({"latency"})).rounds == FULL.rounds


def test_only_names_an_unknown_phase() -> None:
    with pytest.raises(ValueError, match=r"unknown phase.*thruput"):
        FULL.only(frozenset({"thruput"}))


REFERENCE_RULES = ("api-calls", "images", "chat-tokens", "header-tokens", "egress")


@pytest.mark.parametrize(
    ("index", "rules", "writer", "gc"),
    [(0, (), "thread", "tuned"), (1, ("egress",), "thread", "tuned"),
     (2, REFERENCE_RULES, "process", "tuned"), (3, REFERENCE_RULES, "process", "tuned"),
     (4, REFERENCE_RULES, "thread", "default")],
)
def test_floor_variants_differ_from_the_benchmark_config_in_rules_writer_or_gc_only(
    index: int, rules: tuple[str, ...], writer: str, gc: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BENCH_DB", str(tmp_path / "bench.db"))
    path = tmp_path / "floor.yaml"
    path.write_text(variant_config(VARIANTS[index]))
    config = load_config(str(path))
    assert config.rules.names == rules
    assert config.storage.writer == writer
    assert config.proxy.gc == gc
    assert len(config.meters) == 7 and config.plans
    assert VARIANTS[index].second_core == (index == 3)


def _runs(rps: float, cpu_us: float, p50: float, p99: float) -> list[Run]:
    load = LoadResult(requests=int(rps), seconds=1.0, errors=0, p50_us=p50, p99_us=p99)
    return [Run(load, cpu_s=cpu_us * rps / 1e6)] * 2


def test_floor_rows_pair_each_variant_with_bare() -> None:
    found = {
        "bare": _runs(1000, 100, 200, 400),
        "meterproxy": _runs(500, 250, 300, 2400),
        "no rules": _runs(800, 130, 240, 500),
        "egress rule only": _runs(600, 190, 260, 1400),
    }
    names = ["no rules", "egress rule only"]
    rows = summarise(found, names) + latency(found, names)
    results = [row.result for row in rows]
    assert results[0] == "0.50 x bare req/s; +150 us CPU"
    assert results[1] == "0.80 x bare req/s; +30 us CPU"
    assert results[3] == "+120; +60"  # the rules and 2 events; the api.call rule and its event
    assert results[4] == "+100 us; +2,000 us"
    assert results[5] == "+40 us; +100 us"


def test_a_fresh_ingest_row_shows_rate_and_cpu_and_is_judged_by_its_target() -> None:
    served = Served(Ingested(60_000, 60_000, 1.5), cpu_seconds=0.9)  # 40,000/s, 15 us/event
    row = fresh_ingest_row("PostgreSQL (fleet mode, one replica)", served, 16, 50_000)
    assert "16 clients" in row.figure
    assert row.meterproxy == "40,000; 15.0"
    assert (row.result, row.target, row.verdict) == ("40,000/s", ">= 50,000/s", "**missed**")
    assert fresh_ingest_row("SQLite", served, 16, 30_000).verdict == "met"
    unjudged = fresh_ingest_row("SQLite", served, 4, None)
    assert (unjudged.target, unjudged.verdict) == ("-", "-")


async def test_fresh_ingest_measures_sqlite_and_notes_a_postgresql_it_cannot_reach(
    monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int,
) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/x"
    monkeypatch.setattr(suite, "PG_ADMIN_URL", closed)
    out = Outcome()
    await _fresh_ingest(replace(QUICK, ingest_batches=2), out)
    assert [row.figure.split(",")[1].strip() for row in out.rows] == ["SQLite", "SQLite"]
    assert [" 4 clients" in row.figure for row in out.rows] == [True, False]
    assert [" 16 clients" in row.figure for row in out.rows] == [False, True]
    assert [row.target for row in out.rows] == ["-", ">= 100,000/s"]  # the larger judged
    assert all(row.meterproxy.split(";")[0] != "0" for row in out.rows)
    assert len(out.notes) == 1
    assert "PostgreSQL (fleet mode, one replica): not measured" in out.notes[0]
