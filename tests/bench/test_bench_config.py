"""bench/meterproxy.bench.yaml keeps the reference's rules, meters, plans and billing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fleet import CONFIG
from proxy.config import Config, load_config

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "meterproxy.yaml"


def _load(path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Config:
    monkeypatch.setenv("METERPROXY_DB", str(tmp_path / "ref.db"))
    monkeypatch.setenv("BENCH_DB", str(tmp_path / "bench.db"))
    return load_config(str(path))


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared/reference is not beside the checkout")
def test_rules_meters_plans_and_billing_are_the_references(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bench = _load(CONFIG, monkeypatch, tmp_path)
    reference = _load(REFERENCE, monkeypatch, tmp_path)
    assert bench.rules.rules == reference.rules.rules
    assert [m.fingerprint() for m in bench.meters] == [m.fingerprint() for m in reference.meters]
    assert bench.plans == reference.plans
    assert bench.billing == reference.billing
    assert bench.customers == reference.customers


def test_listeners_and_database_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BENCH_PROXY_LISTEN", "127.0.0.1:18123")
    monkeypatch.setenv("BENCH_ADMIN_LISTEN", "127.0.0.1:18124")
    monkeypatch.setenv("BENCH_UPSTREAM", "http://127.0.0.1:18125")
    config = _load(CONFIG, monkeypatch, tmp_path)
    assert (config.proxy.listen.port, config.admin.listen.port) == (18123, 18124)
    assert str(config.proxy.upstream) == "http://127.0.0.1:18125"
    assert config.storage.path == str(tmp_path / "bench.db")
    # The 1 GB upload must fit under the body limit.
    assert config.proxy.max_request_body >= 1_000_000_000
