"""bench/processes.py: placement, ports, RSS and stopping."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from bench.processes import (
    Processes,
    cpu_seconds,
    cpu_split,
    free_port,
    rss_bytes,
    wait_for_port,
)


def test_servers_and_clients_split_the_cpus() -> None:
    servers, clients = cpu_split()
    available = os.sched_getaffinity(0)
    assert servers | clients == available
    if len(available) >= 2:
        assert len(servers) == 1 and not servers & clients


def test_free_port_can_be_bound() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))


def test_rss_of_this_process_and_of_none() -> None:
    assert rss_bytes(os.getpid()) > 1_000_000
    with pytest.raises(OSError):
        rss_bytes(2**22 + 1)  # above the kernel's pid_max default


async def test_a_child_runs_on_its_cpus_logs_and_is_stopped(tmp_path: Path) -> None:
    processes = Processes(tmp_path)
    cpus = frozenset(sorted(os.sched_getaffinity(0))[:1])
    port = free_port()
    code = (
        f"import os, socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port}));"
        " s.listen(); print(sorted(os.sched_getaffinity(0)), flush=True); time.sleep(60)"
    )
    child = processes.start("child", [sys.executable, "-c", code], cpus)
    await wait_for_port(port, child, 10)
    processes.stop_all()
    assert child.returncode is not None
    log = await asyncio.to_thread((tmp_path / "child.log").read_text)
    assert log.strip() == str(sorted(cpus))


async def test_waiting_for_a_child_that_died_says_so(tmp_path: Path) -> None:
    everywhere = frozenset(os.sched_getaffinity(0))
    child = Processes(tmp_path).start(
        "dead", [sys.executable, "-c", "raise SystemExit(3)"], everywhere
    )
    with pytest.raises(RuntimeError, match="exited with 3"):
        await wait_for_port(free_port(), child, 10)


PARENT = """\
import signal, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
signal.signal(signal.SIGTERM, lambda *_: (child.kill(), child.wait(), sys.exit(0)))
child.wait()
"""


async def test_cpu_time_of_a_process_includes_its_children(tmp_path: Path) -> None:
    port = free_port()
    burn = (
        "import socket, time\n"
        "while time.process_time() < 0.3: pass\n"
        f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"
    )
    processes = Processes(tmp_path)
    everywhere = frozenset(os.sched_getaffinity(0))
    parent = processes.start("parent", [sys.executable, "-c", PARENT, burn], everywhere)
    try:
        await wait_for_port(port, parent, 30)  # the child listens once it has burnt 0.3 s
        assert cpu_seconds(parent.pid) >= 0.29
    finally:
        processes.stop_all()
