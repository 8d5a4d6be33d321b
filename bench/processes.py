"""Child processes of the benchmark: start pinned to a CPU set, wait for a port, read
RSS and CPU time, stop. Every process started here is stopped by the `Processes` that
started it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` and its live child processes (meterproxy's store process)
    from /proc (VmRSS); OSError when the process is gone."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total = int(line.split()[1]) * 1024
            for child in children(pid):
                with contextlib.suppress(OSError):  # a child may end meanwhile
                    total += rss_bytes(child)
            return total
    raise OSError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by `pid`, its threads and its live child
    processes (nginx's worker, meterproxy's store process); OSError when `pid` is gone."""
    # Fields after the parenthesised command name: utime and stime are the 12th and 13th.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    total = (int(fields[11]) + int(fields[12])) / _TICKS
    for child in children(pid):
        with contextlib.suppress(OSError):  # a child may end meanwhile
            total += cpu_seconds(child)
    return total


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (of any of its threads)."""
    return [int(child) for task in Path(f"/proc/{pid}").glob("task/*/children")
            for child in task.read_text().split()]


def cpu_split() -> tuple[frozenset[int], frozenset[int]]:
    """(server CPUs, client CPUs): the server under test gets the first CPU alone and
    everything else (load generator, upstream, this script) the rest. On one CPU both
    are that CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return frozenset(cpus), frozenset(cpus)
    return frozenset(cpus[:1]), frozenset(cpus[1:])


async def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float) -> None:
    """Return once 127.0.0.1:port accepts; RuntimeError if the process exits or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{process.args!r} did not listen on {port} within {seconds}s")


class Processes:
    """Starts child processes (output to a log file each) and stops them all, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._started: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        name: str,
        args: Sequence[str],
        cpus: frozenset[int],
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            list(args), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        log.close()  # the child holds its own descriptor
        # Set right after exec (not in preexec_fn, unsafe with threads): the child is still
        # starting up, so the threads and worker processes it makes later inherit the set.
        os.sched_setaffinity(process.pid, cpus)
        self._started.append(process)
        return process

    def stop_all(self, grace: float = 30.0) -> None:
        """SIGTERM each process (newest first) and wait; SIGKILL after `grace` seconds."""
        for process in reversed(self._started):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(grace)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._started.clear()
