"""proxy.gc: the collector's schedule while meterproxy serves, and the one before after."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.config import load_config, parse_config
from proxy.gc_schedule import OLDER_THRESHOLD, YOUNG_THRESHOLD, applied
from tests.conftest import StartProxy, write_config
from tests.proxy.test_config import BASE

PYTHONS = (700, 10, 10)  # CPython's own schedule


@pytest.fixture(autouse=True)
def pythons_schedule() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(*PYTHONS)
    yield
    gc.set_threshold(*before)


def test_tuned_collects_the_young_generation_rarely_and_restores_the_schedule() -> None:
    with applied("tuned"):
        assert gc.get_threshold() == (YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)
    assert gc.get_threshold() == PYTHONS


def test_default_keeps_pythons_schedule() -> None:
    with applied("default"):
        assert gc.get_threshold() == PYTHONS


def test_the_schedule_is_restored_when_serving_fails() -> None:
    with pytest.raises(OSError), applied("tuned"):
        raise OSError("address in use")
    assert gc.get_threshold() == PYTHONS


def test_the_configuration_takes_tuned_by_default_and_default_when_asked() -> None:
    assert parse_config(BASE, "m.yaml").proxy.gc == "tuned"
    text = BASE.replace("proxy:\n", "proxy:\n  gc: default\n", 1)
    assert parse_config(text, "m.yaml").proxy.gc == "default"


async def test_a_reload_keeps_the_schedule_of_the_start_and_says_so(
    start_proxy: StartProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_proxy("http://127.0.0.1:9")
    changed = load_config(write_config(tmp_path, "http://127.0.0.1:9", proxy_extra="gc: default",
                                       name="changed.yaml"))
    running.mp.reload(changed)
    assert running.mp.config.proxy.gc == "tuned"  # what the process runs with until restart
    assert any("proxy.gc" in r.message and "next restart" in r.message for r in caplog.records)
