"""Proxy throughput of this tree against another checkout, in the same rounds.

Two `meterproxy run` processes with the benchmark configuration (reference rules, every
event stored), one from this tree and one from `--before TREE` (e.g. `git worktree add
/tmp/before HEAD~3`), each on a fresh SQLite file, both pinned to the first core in front of
one upstream on the other core. The load generator (`bench/run.py`'s: wrk when installed)
drives them in alternating order round after round; each round gives the ratio this/before
of requests/s and of the server's CPU per request. On a shared machine only such paired
ratios mean something; the absolute figures drift with the host's load.

Run: .venv/bin/python -m bench.proxy_ab --before TREE [--rounds 6] [--seconds 8]
     [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bench import calls
from bench.fleet import START_SECONDS, start_meterproxy, upstream_command
from bench.loadgen import pick_generator
from bench.processes import Processes, cpu_split, free_port, wait_for_port
from bench.stats import paired_ratios, spread

WARM_UP_SECONDS = 3.0


async def main(before: Path, rounds: int, seconds: float, connections: int) -> None:
    load = pick_generator()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        processes = Processes(workdir)
        try:
            upstream_port = free_port()
            up = processes.start("upstream", upstream_command(upstream_port), cpu_split()[1])
            await wait_for_port(upstream_port, up, START_SECONDS)
            upstream = f"http://127.0.0.1:{upstream_port}"
            targets = []
            for name, tree in (("before", before), ("this", None)):
                target, _ = await start_meterproxy(processes, workdir, name, upstream, tree=tree)
                targets.append(target)
            for target in targets:
                await load.run(target.url + calls.PATH, connections, WARM_UP_SECONDS)
            found: calls.Results = {t.name: [] for t in targets}
            for round_ in range(rounds):
                for target in targets if round_ % 2 == 0 else reversed(targets):
                    run = await calls.measured(load, target, connections, seconds)
                    found[target.name].append(run)
                    print(f"round {round_ + 1} {target.name}: {run.load.rps:,.0f} req/s,"
                          f" {run.cpu_us_per_request:.0f} us CPU/request", flush=True)
        finally:
            processes.stop_all()
    print(summary(found, connections))


def summary(found: calls.Results, connections: int) -> str:
    """Markdown: medians (ranges) per tree, and the per-round ratios this/before."""
    rps = {name: [r.load.rps for r in runs] for name, runs in found.items()}
    cpu = {name: [r.cpu_us_per_request for r in runs] for name, runs in found.items()}
    return "\n".join([
        f"\nproxy A/B, {connections} connections, GET {calls.PATH}; median (range) over rounds",
        "",
        "| tree | req/s | CPU us/request |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {spread(rps[name]).render(0)} | {spread(cpu[name]).render(0)} |"
          for name in found),
        "",
        f"this/before: req/s {paired_ratios(rps['this'], rps['before']).render(2)},"
        f" CPU per request {paired_ratios(cpu['this'], cpu['before']).render(2)}",
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.before, args.rounds, args.seconds, args.connections))
