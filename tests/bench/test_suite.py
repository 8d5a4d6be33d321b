"""bench/suite.py plans restricted to some phases; bench/floor.py's variant configurations."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.floor import VARIANTS, variant_config
from bench.suite import DEFAULT_PHASES, FULL, QUICK
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


@pytest.mark.parametrize(
    ("variant", "rules"), [("no rules", ()), ("egress rule only", ("egress",))]
)
def test_floor_variants_differ_from_the_benchmark_config_in_rules_only(
    variant: str, rules: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_DB", str(tmp_path / "bench.db"))
    path = tmp_path / "floor.yaml"
    path.write_text(variant_config(VARIANTS[variant]))
    config = load_config(str(path))
    assert config.rules.names == rules
    assert len(config.meters) == 7 and config.plans
