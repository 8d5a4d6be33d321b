"""`make bench`: meterproxy against direct, bare aiohttp and nginx, in one run.

Usage: .venv/bin/python bench/run.py [--quick] [--only PHASE,...] [--rounds N] [--output FILE]
    (full: under 10 minutes, written to bench/results/latest.md;
     --quick: under 2 minutes, smaller figures, written to bench/results/quick.md;
     --only: just these phases (throughput, latency, sse, soak, profile, streams, ingest,
     billing, floor), written to bench/results/only.md unless --output says otherwise;
     e.g. `--only throughput,latency,floor --rounds 5` takes about 3 minutes;
     --budget SECONDS: the whole run's time budget instead of the plan's 590 s, e.g.
     `--only soak --budget 1200` to let the soak reach its 1M requests on a slow machine)

wrk, nginx and py-spy are optional (`make bench-deps` installs them); without wrk the
load comes from an aiohttp client, and the report says which generator ran.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
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
    parser.add_argument("--only", help="comma-separated phases to run (default: all but floor)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default: the plan's)")
    parser.add_argument("--output", type=Path, help="where to write the markdown report")
    parser.add_argument("--budget", type=float, help="the run's time budget in seconds")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    name = "quick.md" if args.quick else "latest.md"
    if args.only or args.rounds:
        only = frozenset(args.only.split(",")) if args.only else plan.phases
        try:
            plan = plan.only(only, args.rounds)
        except ValueError as exc:
            parser.error(str(exc))
        name = "only.md"
    if args.budget:
        plan = replace(plan, budget_s=args.budget)
    output = args.output or RESULTS / name
    print(uvloop.run(run(plan, output)))
    print(f"\n(written to {output})")


if __name__ == "__main__":
    main()
