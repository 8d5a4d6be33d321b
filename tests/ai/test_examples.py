"""Every example rule set passes `meterproxy check` as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.cli import main
from proxy.config import load_config
from tests.ai.conftest import EXAMPLES

FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_the_examples_are_all_here() -> None:
    assert [path.stem for path in FILES] == ["anthropic", "gemini", "openai"]


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.stem)
def test_the_example_passes_check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ok: ")
    assert load_config(path, environ={}).warnings == ()
