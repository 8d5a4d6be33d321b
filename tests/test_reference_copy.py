"""tests/data/reference-meterproxy.yaml is the contract's file, byte for byte."""

from __future__ import annotations

import pytest

from tests.reference import COPY, SHARED


@pytest.mark.skipif(not SHARED.is_file(), reason="no ../shared/reference beside this clone")
def test_the_copy_equals_the_contract() -> None:
    assert COPY.read_bytes() == SHARED.read_bytes(), (
        f"the contract changed: cp {SHARED} {COPY}"
    )
