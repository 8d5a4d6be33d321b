"""A throwaway PostgreSQL server of a test's own, to stop and start under load without
touching the machine's shared cluster (other tests use that one).

initdb refuses to run as root, so as root the server runs as the `postgres` user (`runuser`);
its data directory is a fresh directory in /tmp that that user owns, its socket lives there
too, and it listens on a free port of 127.0.0.1 with trust authentication.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _bin_dir() -> Path:
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One PostgreSQL server in a temporary directory; `create()` first, `destroy()` last."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._bin = _bin_dir()
        self._root = Path(tempfile.mkdtemp(prefix="meterproxy-pg-"))
        self._data = self._root / "data"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self._root, "postgres")
            self._as_owner = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres",
                              "--"]

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def create(self) -> None:
        """initdb, then start."""
        subprocess.run(
            [*self._as_owner, str(self._bin / "initdb"), "-D", str(self._data), "-U", "postgres",
             "--auth=trust", "--no-instructions", "-E", "UTF8"],
            check=True, capture_output=True,
        )
        subprocess.run(self._pg_ctl("start"), check=True, capture_output=True)

    async def stop(self, mode: str = "immediate") -> None:
        """Stop the server ("immediate": as a crash would, sessions cut mid-transaction)."""
        await self._run(*self._pg_ctl("stop"), "-m", mode)

    async def start(self) -> None:
        """Start the server and return once it accepts connections."""
        await self._run(*self._pg_ctl("start"))

    async def start_if_stopped(self) -> None:
        status = await asyncio.create_subprocess_exec(
            *self._pg_ctl("status"), stdout=asyncio.subprocess.DEVNULL
        )
        if await status.wait() != 0:  # 3: no server running
            await self.start()

    def destroy(self) -> None:
        subprocess.run([*self._pg_ctl("stop"), "-m", "immediate"], capture_output=True)
        shutil.rmtree(self._root, ignore_errors=True)

    def _pg_ctl(self, action: str) -> list[str]:
        command = [*self._as_owner, str(self._bin / "pg_ctl"), action, "-w", "-D", str(self._data)]
        if action == "start":
            options = f"-p {self.port} -k {self._root} -c listen_addresses=127.0.0.1"
            command += ["-l", str(self._root / "server.log"), "-o", options]
        return command

    async def _run(self, *command: str) -> None:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {output.decode(errors='replace')}")
