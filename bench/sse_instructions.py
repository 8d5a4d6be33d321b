"""Instructions that SSE parsing adds to a streamed exchange, counted by callgrind (a script).

`bench_sse_cpu` times the meterproxy process, and on a shared 2-core machine its rounds
vary more than the effect it looks for. This script counts instructions instead:
valgrind's callgrind runs each meterproxy process (`plain` and `sse`, as in
`bench_sse_cpu`: the AI examples' rules without and with their `response.json` values)
and counts only while the measured exchanges run (`callgrind_control` turns counting on
before them and dumps the total after), so start-up and warm-up are left out and the
count does not depend on what else the machine is doing.

Streams are paced (`--interval-us`, default 2 ms) and run one at a time, so meterproxy,
slowed some 50x under valgrind, still reads one event per chunk, as it does from real
providers that send a token every few milliseconds. Each sample is the total over
`--exchanges` exchanges of one provider; rounds repeat the samples to show how steady
the count is. `--before DIR` counts a third process running the packages in DIR.

Run: .venv/bin/python -m bench.sse_instructions [--rounds 2 --exchanges 2 --events 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.bench_sse_cpu import (
    PROVIDERS,
    TARGET_PERCENT,
    Plan,
    Proxy,
    exchange,
    write_config,
)
from bench.bench_sse_cpu import _meterproxy_args as meterproxy_args
from bench.processes import Processes, cpu_split, free_port, wait_for_port
from bench.stats import paired_ratios, spread

START_SECONDS = 300  # imports under valgrind take a while
SETTLE_SECONDS = 1.0  # the exchanges' events stored (flush_interval 50 ms, slowed down)


@dataclass(frozen=True)
class Counted:
    """A meterproxy process under callgrind and where its dumps go."""

    proxy: Proxy
    dumps: Path  # the --callgrind-out-file prefix; dump n is f"{dumps}.{n}"

    def control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.proxy.pid)],
                       check=True, capture_output=True)

    def total(self, n: int) -> int:
        """The instructions counted in dump n (the `totals:` line)."""
        for line in Path(f"{self.dumps}.{n}").read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {self.dumps}.{n}")


async def start(processes: Processes, workdir: Path, plan: Plan) -> dict[str, Counted]:
    """The upstream on the client CPUs, one meterproxy per mode under callgrind."""
    server_cpus, client_cpus = cpu_split()
    port = free_port()
    upstream_args = [sys.executable, "-m", "bench.bench_sse_cpu", "--serve-upstream", str(port)]
    await wait_for_port(port, processes.start("upstream", upstream_args, client_cpus), 30)
    counted = {}
    for mode in plan.modes:
        ports = (free_port(), free_port())
        config = workdir / f"{mode}.yaml"
        write_config(config, mode != "plain", f"http://127.0.0.1:{port}", ports)
        dumps = workdir / f"callgrind.{mode}"
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={dumps}"]
        process = processes.start(mode, valgrind + meterproxy_args(mode, config, plan.before),
                                  server_cpus)
        for listening in ports:
            await wait_for_port(listening, process, START_SECONDS)
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        counted[mode] = Counted(Proxy(mode, urls[0], urls[1], process.pid), dumps)
    return counted


async def count(counted: dict[str, Counted], plan: Plan) -> dict[tuple[str, str], list[int]]:
    """Per (provider, mode), instructions per exchange in each round."""
    found: dict[tuple[str, str], list[int]] = {}
    dumped = dict.fromkeys(counted, 0)
    async with aiohttp.ClientSession() as session:
        for target in counted.values():  # warm-up, not counted
            for provider in PROVIDERS:
                await exchange(session, target.proxy.url, provider, plan)
        for _ in range(plan.rounds):
            for provider in PROVIDERS:
                for mode, target in counted.items():
                    target.control("--instr=on")
                    for _ in range(plan.exchanges):
                        await exchange(session, target.proxy.url, provider, plan)
                    await asyncio.sleep(SETTLE_SECONDS)
                    target.control("--instr=off")
                    target.control("--dump")
                    target.control("--zero")
                    dumped[mode] += 1
                    total = target.total(dumped[mode])
                    found.setdefault((provider, mode), []).append(total // plan.exchanges)
    return found


def report(found: dict[tuple[str, str], list[int]], plan: Plan) -> str:
    lines = [
        f"rounds {plan.rounds}, {plan.exchanges} exchanges per sample, {plan.events} events "
        f"per stream, {plan.interval_us} us apart, one stream at a time (callgrind)",
        "meterproxy instructions per streamed exchange, median (range) of rounds:",
    ]
    worst = 0.0
    for provider in PROVIDERS:
        plain = found[provider, "plain"]
        for mode in plan.modes[1:]:
            ratio = paired_ratios(found[provider, mode], plain)
            added = spread([(s - p) / plan.events for s, p in
                            zip(found[provider, mode], plain, strict=True)])
            lines += [
                f"  {provider}: plain {spread(plain).render(0)}, {mode} "
                f"{spread(found[provider, mode]).render(0)}",
                f"  {provider}: {mode} adds {(ratio.median - 1) * 100:+.2f} % "
                f"(range {(ratio.low - 1) * 100:+.2f} to {(ratio.high - 1) * 100:+.2f}), "
                f"{added.render(0)} instructions per event",
            ]
            if mode == "sse":
                worst = max(worst, (ratio.median - 1) * 100)
    lines.append(f"verdict: sse overhead < {TARGET_PERCENT:.0f} %: {worst < TARGET_PERCENT}")
    return "\n".join(lines)


async def main(plan: Plan) -> str:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind (Debian package valgrind) is needed")
    with tempfile.TemporaryDirectory(prefix="bench-sse-instr-") as tmp:
        processes = Processes(Path(tmp))
        try:
            found = await count(await start(processes, Path(tmp), plan), plan)
        finally:
            processes.stop_all()
    return report(found, plan)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--exchanges", type=int, default=2, help="per sample")
    parser.add_argument("--events", type=int, default=1000, help="per stream (at least 5)")
    parser.add_argument("--interval-us", type=int, default=2000, help="between events")
    parser.add_argument("--before", type=Path, metavar="DIR", help="also count this tree")
    return parser.parse_args()


if __name__ == "__main__":
    args = _arguments()
    shape = (args.rounds, args.exchanges, args.events, args.interval_us, 1, args.before)
    print(asyncio.run(main(Plan(*shape))))
