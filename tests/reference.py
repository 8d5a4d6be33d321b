"""Where tests find the product contract's configuration, shared/reference/meterproxy.yaml.

The contract lives beside the repository (../shared/reference/), where a checkout in the
team's workspace finds it and tests follow its latest word. A clone elsewhere has no
../shared: then the copy in tests/data/ stands in, and test_reference_copy.py fails
whenever the two differ, so the copy cannot drift unnoticed.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "reference" / "meterproxy.yaml"
COPY = ROOT / "tests" / "data" / "reference-meterproxy.yaml"
REFERENCE = SHARED if SHARED.is_file() else COPY
