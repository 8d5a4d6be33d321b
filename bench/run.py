"""`make bench`: meterproxy against direct, bare aiohttp and nginx, in one run.

Usage: .venv/bin/python bench/run.py [--quick] [--output FILE]
    (full: under 10 minutes, written to bench/results/latest.md;
     --quick: under 2 minutes, smaller figures, written to bench/results/quick.md)

wrk, nginx and py-spy are optional (`make bench-deps` installs them); without wrk the
load comes from an aiohttp client, and the report says which generator ran.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def main() -> None:
    # `python bench/run.py` puts bench/ first on sys.path; the repository must be there.
    sys.path[0] = str(ROOT)
    import uvloop

    from bench.suite import FULL, QUICK, run

    parser = argparse.ArgumentParser(description="meterproxy benchmark")
    parser.add_argument("--quick", action="store_true", help="a smoke run under 2 minutes")
    parser.add_argument("--output", type=Path, help="where to write the markdown report")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    output = args.output or RESULTS / ("quick.md" if args.quick else "latest.md")
    print(uvloop.run(run(plan, output)))
    print(f"\n(written to {output})")


if __name__ == "__main__":
    main()
