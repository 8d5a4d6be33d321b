"""Instructions meterproxy spends per proxied request, counted by callgrind (a script).

On a shared 2-core machine the CPU time of a request varies from minute to minute by more
than most changes to the hot path save (`bench.proxy_ab` times them in paired rounds, and
still needs several). Callgrind counts instructions instead, which do not depend on what
else the machine is doing. Each meterproxy process runs under valgrind with the benchmark
configuration (reference rules, every event stored); counting is on only while a sample's
requests run (`GET /v1/items` with 10,000 customers' ids, 4 at a time) and until their
events are stored, and every thread is counted apart: the event loop, and the others
(the SQLite writer; the readers do nothing here).

Targets: `bare` (bench/bare.py, the floor of our stack: forward only), `no rules`
(meterproxy identifying and forwarding, no events), `this` (this tree), and with
`--before TREE` that checkout's meterproxy, all with the same upstream and load, sample
after sample in turn. Under valgrind meterproxy is some 50x slower, so a flush holds fewer
events than at full speed: the writer's count per event is an upper bound of its cost in
production, comparable between trees, not with bench.bench_store.

Run: .venv/bin/python -m bench.proxy_instructions [--before TREE] [--rounds 2]
     [--requests 1000]
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

from bench.fleet import bare_command, start_meterproxy, upstream_command
from bench.floor import VARIANTS, variant_config
from bench.loadgen import customer_id
from bench.processes import Processes, cpu_split, free_port, wait_for_port
from bench.stats import paired_ratios, spread

START_SECONDS = 300  # imports under valgrind take a while
SETTLE_SECONDS = 2.0  # the sample's events stored (flush_interval 50 ms, slowed down)
CLIENTS = 4
PATH = "/v1/items"


@dataclass(frozen=True)
class Counted:
    """A meterproxy process under callgrind and where its dumps go."""

    name: str
    url: str
    pid: int
    dumps: Path  # the --callgrind-out-file prefix; dump n of thread t is f"{dumps}.{n}-{t:02d}"

    def control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.pid)],
                       check=True, capture_output=True)

    def totals(self, n: int) -> tuple[int, int]:
        """Instructions counted in dump n: (the event loop's thread, every other thread)."""
        loop = others = 0
        for dump in self.dumps.parent.glob(f"{self.dumps.name}.{n}-*"):
            total = _totals(dump)
            if dump.name.endswith("-01"):
                loop += total
            else:
                others += total
        return loop, others


def _totals(dump: Path) -> int:
    """The dump's `totals:` line (its `summary:` line, written first, may read 0)."""
    for line in reversed(dump.read_text().splitlines()):
        if line.startswith("totals:"):
            return int(line.split()[1])
    return 0


async def start(processes: Processes, workdir: Path, before: Path | None) -> list[Counted]:
    server_cpus, client_cpus = cpu_split()
    port = free_port()
    upstream = processes.start("upstream", upstream_command(port), client_cpus)
    await wait_for_port(port, upstream, 30)
    upstream_url = f"http://127.0.0.1:{port}"
    counted = [await _start_bare(processes, workdir, server_cpus, upstream_url)]
    plan: list[tuple[str, str | None, Path | None]] = [
        ("no rules", variant_config(VARIANTS[0]), None)]
    if before is not None:
        plan.append(("before", None, before))
    plan.append(("this", None, None))
    for name, text, tree in plan:
        dumps = workdir / f"callgrind.{name.replace(' ', '-')}"
        target, _ = await start_meterproxy(processes, workdir, name, upstream_url,
                                           config_text=text, tree=tree,
                                           wrapper=_valgrind(dumps), start_seconds=START_SECONDS)
        counted.append(Counted(name, target.url, target.pid, dumps))
    return counted


async def _start_bare(processes: Processes, workdir: Path, cpus: frozenset[int],
                      upstream_url: str) -> Counted:
    """bench/bare.py under callgrind: the floor meterproxy's own forwarding is counted
    against (it has no other threads)."""
    listen = free_port()
    dumps = workdir / "callgrind.bare"
    command = [*_valgrind(dumps), *bare_command(listen, upstream_url)]
    process = processes.start("bare", command, cpus, {})
    await wait_for_port(listen, process, START_SECONDS)
    return Counted("bare", f"http://127.0.0.1:{listen}", process.pid, dumps)


def _valgrind(dumps: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
            f"--callgrind-out-file={dumps}"]


async def requests(session: aiohttp.ClientSession, url: str, first: int, n: int) -> None:
    """`n` requests, CLIENTS at a time, customers numbered from `first`."""
    numbers = iter(range(first, first + n))

    async def client() -> None:
        for number in numbers:
            headers = {"X-Customer-Id": customer_id(number)}
            async with session.get(url + PATH, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: status {response.status}")

    await asyncio.gather(*(client() for _ in range(CLIENTS)))


async def count(counted: list[Counted], rounds: int, n: int) -> dict[str, list[tuple[int, int]]]:
    """Per target, (event loop, other threads) instructions per request in each round."""
    found: dict[str, list[tuple[int, int]]] = {t.name: [] for t in counted}
    async with aiohttp.ClientSession() as session:
        for target in counted:  # warm-up, not counted: pools, caches, first pages
            await requests(session, target.url, 0, n // 4)
        for round_ in range(rounds):
            for target in counted if round_ % 2 == 0 else counted[::-1]:
                target.control("--instr=on")
                await requests(session, target.url, round_ * n, n)
                await asyncio.sleep(SETTLE_SECONDS)
                target.control("--instr=off")
                target.control("--dump")
                target.control("--zero")
                loop, others = target.totals(round_ + 1)
                found[target.name].append((loop // n, others // n))
                print(f"round {round_ + 1} {target.name}: event loop {loop // n:,},"
                      f" other threads {others // n:,} instructions per request", flush=True)
    return found


def report(found: dict[str, list[tuple[int, int]]], n: int) -> str:
    lines = [f"\nmeterproxy instructions per request (callgrind; {n:,} requests per sample,"
             f" {CLIENTS} at a time, GET {PATH}); median (range) of rounds", "",
             "| target | event loop | other threads | all |", "| --- | ---: | ---: | ---: |"]
    for name, samples in found.items():
        loop = [float(s[0]) for s in samples]
        others = [float(s[1]) for s in samples]
        both = [a + b for a, b in zip(loop, others, strict=True)]
        lines.append(f"| {name} | {spread(loop).render(0)} | {spread(others).render(0)}"
                     f" | {spread(both).render(0)} |")
    lines.append("")
    for name, base in (("no rules", "bare"), ("this", "bare"), ("this", "before")):
        if name in found and base in found:
            ratio = paired_ratios(_all_threads(found[name]), _all_threads(found[base]))
            lines.append(f"{name}/{base}, all threads: {ratio.render(3)}")
    return "\n".join(lines)


def _all_threads(samples: list[tuple[int, int]]) -> list[float]:
    return [float(loop + others) for loop, others in samples]


async def main(before: Path | None, rounds: int, n: int) -> str:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind (Debian package valgrind) is needed")
    with tempfile.TemporaryDirectory(prefix="bench-proxy-instr-") as tmp:
        processes = Processes(Path(tmp))
        try:
            found = await count(await start(processes, Path(tmp), before), rounds, n)
        finally:
            processes.stop_all()
    return report(found, n)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--before", type=Path, metavar="TREE", help="also count this tree")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=1000, help="per sample")
    args = parser.parse_args()
    print(asyncio.run(main(args.before, args.rounds, args.requests)), file=sys.stdout)
