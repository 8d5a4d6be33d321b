"""The servers of one benchmark run, each its own process: the upstream, and in front of
it the bare proxy, nginx (when installed) and meterproxy with the reference rules.

Placement on a 2-core machine: every server under test (bare, nginx, meterproxy) is
pinned to core 0; the upstream, the load generator and this script share core 1. Only
the target being measured is busy at any moment, so each proxy has core 0 to itself
(meterproxy's SQLite writer thread included: storing events is part of its cost).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.nginx import nginx_binary, nginx_version, prepare_prefix
from bench.processes import Processes, cpu_split, free_port, wait_for_port

BENCH = Path(__file__).resolve().parent
CONFIG = BENCH / "meterproxy.bench.yaml"
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
START_SECONDS = 30.0
PYTHON = sys.executable


@dataclass(frozen=True)
class Target:
    """Something the load generator can be pointed at: `url` + a path."""

    name: str  # direct | bare | nginx | meterproxy
    url: str
    pid: int  # the process that serves `url`


@dataclass(frozen=True)
class Fleet:
    targets: tuple[Target, ...]  # in measuring order: direct, bare, [nginx,] meterproxy
    admin_url: str  # meterproxy's admin listener
    nginx: str  # nginx's version, or "not installed"

    def target(self, name: str) -> Target:
        """The target called `name`; KeyError when it is not running (nginx missing)."""
        for target in self.targets:
            if target.name == name:
                return target
        raise KeyError(name)


async def start_fleet(processes: Processes, workdir: Path) -> Fleet:
    """Start every server and wait until each listens; RuntimeError if one does not."""
    server_cpus, client_cpus = cpu_split()
    direct = await _serve(processes, "direct", client_cpus, upstream_command)
    upstream_port = int(direct.url.rpartition(":")[2])
    targets = [direct, await _serve(processes, "bare", server_cpus, _bare_args(direct.url))]
    binary = nginx_binary()
    version = "not installed" if binary is None else nginx_version(binary)
    if binary is not None:
        prefix = workdir / "nginx"

        def nginx_args(port: int) -> list[str]:
            return [binary, *prepare_prefix(prefix, port, upstream_port)]

        targets.append(await _serve(processes, "nginx", server_cpus, nginx_args))
    meterproxy, admin_url = await start_meterproxy(processes, workdir, "meterproxy", direct.url)
    targets.append(meterproxy)
    return Fleet(tuple(targets), admin_url, version)


async def start_meterproxy(
    processes: Processes, workdir: Path, name: str, upstream: str, *,
    config_text: str | None = None, tree: Path | None = None,
    wrapper: Sequence[str] = (), start_seconds: float = START_SECONDS,
) -> tuple[Target, str]:
    """`meterproxy run` of `config_text` (None: the benchmark configuration) in front of
    `upstream`, from `tree` (None: this one), under `wrapper` (e.g. valgrind), pinned to the
    servers' core, its SQLite file in `workdir`; once both its listeners answer, the target
    and its admin URL."""
    slug = name.replace(" ", "-").replace(",", "").replace("'", "")
    config = CONFIG
    if config_text is not None:
        config = workdir / f"{slug}.yaml"
        await asyncio.to_thread(config.write_text, config_text)
    listen, admin = free_port(), free_port()
    env = meterproxy_env(listen, admin, workdir / f"{slug}.db", upstream)
    command = [*wrapper, *meterproxy_command(tree), "run", "-c", str(config)]
    process = processes.start(slug, command, cpu_split()[0], env)
    for port in (listen, admin):
        await wait_for_port(port, process, start_seconds)
    return Target(name, f"http://127.0.0.1:{listen}", process.pid), f"http://127.0.0.1:{admin}"


# Runs proxy.cli from the tree named by the first argument (`--before`), not this one.
_FROM_TREE = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from proxy.cli import main;"
              " sys.exit(main())")


def meterproxy_command(tree: Path | None = None) -> list[str]:
    """The command that runs meterproxy's CLI from this tree, or from the checkout at `tree`
    (another tree's packages, this venv): its arguments follow."""
    if tree is None:
        return [PYTHON, "-m", "proxy.cli"]
    return [PYTHON, "-c", _FROM_TREE, str(tree)]


def meterproxy_env(
    listen: int, admin: int, db: Path, upstream: str | None = None,
) -> dict[str, str]:
    """The environment that fills in the benchmark configuration's listeners, SQLite file,
    admin token and (unless None: its default) upstream."""
    env = {"BENCH_PROXY_LISTEN": f"127.0.0.1:{listen}", "BENCH_ADMIN_LISTEN": f"127.0.0.1:{admin}",
           "METERPROXY_ADMIN_TOKEN": ADMIN_TOKEN, "BENCH_DB": str(db)}
    if upstream is not None:
        env["BENCH_UPSTREAM"] = upstream
    return env


def upstream_command(port: int) -> list[str]:
    """The benchmark upstream (bench/upstream.py) listening on `port`."""
    return [PYTHON, str(BENCH / "upstream.py"), f"--port={port}"]


def bare_command(port: int, upstream_url: str) -> list[str]:
    """The bare pass-through proxy (bench/bare.py) on `port`, in front of `upstream_url`."""
    return [PYTHON, str(BENCH / "bare.py"), f"--port={port}", f"--upstream={upstream_url}"]


def _bare_args(upstream_url: str) -> Callable[[int], list[str]]:
    return lambda port: bare_command(port, upstream_url)


async def _serve(
    processes: Processes, name: str, cpus: frozenset[int], command: Callable[[int], list[str]],
) -> Target:
    """Start `command(port)` on a free port; wait until it listens there."""
    port = free_port()
    process = processes.start(name, command(port), cpus)
    await wait_for_port(port, process, START_SECONDS)
    return Target(name, f"http://127.0.0.1:{port}", process.pid)
