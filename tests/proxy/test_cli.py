"""The `meterproxy` command as users run it: a real subprocess, real signals."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy.version import __version__
from tests.conftest import write_config
from tests.proxy.test_config import BASE, REFERENCE
from tests.proxy.upstream import Upstream

CLI = [sys.executable, "-m", "proxy.cli"]


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_version() -> None:
    code, out, _ = await run_cli("--version")
    assert code == 0
    assert out.strip() == f"meterproxy {__version__}"


async def test_check_accepts_the_reference_file() -> None:
    code, out, err = await run_cli("check", "-c", str(REFERENCE))
    assert code == 0, err
    assert out.strip() == f"{REFERENCE}: ok: 5 rules, 7 meters, 1 plans"


async def test_check_reports_every_problem_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace("read: 30s", "read: soon").replace("currency: USD", "currency: X"))
    code, out, err = await run_cli("check", "-c", str(path))
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{path}:4: proxy.timeouts.read: ")
    assert re.match(rf"{re.escape(str(path))}:\d+: plans\[0\]\.currency: ", lines[1])


class Server:
    """A `meterproxy run` child process; its log goes to a file that tests read."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.ports: dict[str, int] = {}

    @classmethod
    async def start(cls, config: Path, *extra: str) -> Server:
        log = config.with_suffix(".log")
        handle = log.open("w")
        process = await asyncio.create_subprocess_exec(
            *CLI, *extra, "run", "-c", str(config), stdout=handle, stderr=handle
        )
        server = cls(process, log)
        await server.wait_for_log(r"admin listening on http://[\d.]+:(\d+)")
        return server

    async def wait_for_log(self, pattern: str, within_s: float = 20) -> re.Match[str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while loop.time() < deadline:
            text = self.log.read_text()
            for name, port in re.findall(r"(\w+) listening on http://[\d.]+:(\d+)", text):
                self.ports[name] = int(port)
            match = re.search(pattern, text)
            if match:
                return match
            if self.process.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"{pattern!r} not logged:\n{self.log.read_text()}")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), timeout=30)


@pytest.fixture
async def upstream(aiohttp_server: Any) -> tuple[Upstream, TestServer]:
    up = Upstream()
    return up, await aiohttp_server(up.app())


def stored_events(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT event_name, customer_id FROM events ORDER BY seq"))


async def test_sigterm_finishes_in_flight_exchanges_and_flushes_every_event(
    upstream: tuple[Upstream, TestServer], tmp_path: Path
) -> None:
    _, server = upstream
    config = write_config(tmp_path, f"http://127.0.0.1:{server.port}")
    # A long flush interval: only the shutdown flush can store these events.
    config.write_text(config.read_text().replace("flush_interval: 10ms", "flush_interval: 60s"))
    child = await Server.start(config)
    headers = {"X-Customer-Id": "acme"}
    async with aiohttp.ClientSession() as session:

        async def call(i: int) -> int:
            path = "/v1/slow?s=0.5" if i % 5 == 0 else "/v1/echo"
            async with session.get(child.url("proxy") + path, headers=headers) as r:
                await r.read()
                return r.status

        calls = [asyncio.ensure_future(call(i)) for i in range(40)]
        await asyncio.sleep(0.2)  # the slow ones are in flight
        child.process.send_signal(signal.SIGTERM)
        statuses = await asyncio.gather(*calls)
    assert await child.stop() == 0
    answered = statuses.count(200)
    assert answered == 40  # in-flight exchanges were finished, not cut
    events = stored_events(tmp_path / "meterproxy.db")
    assert len(events) == 2 * answered  # api.call and bandwidth for every answered exchange
    assert "stopped" in child.log.read_text()


async def test_sighup_reloads_and_a_bad_file_keeps_the_running_config(
    upstream: tuple[Upstream, TestServer], tmp_path: Path
) -> None:
    _, server = upstream
    config = write_config(tmp_path, f"http://127.0.0.1:{server.port}")
    original = config.read_text()
    child = await Server.start(config)
    headers = {"X-Customer-Id": "acme"}
    async with aiohttp.ClientSession() as session:

        async def call() -> None:
            async with session.get(child.url("proxy") + "/v1/echo", headers=headers) as r:
                assert r.status == 200

        config.write_text(original.replace("event_name: api.call", "event_name: api.request"))
        child.process.send_signal(signal.SIGHUP)
        await child.wait_for_log("configuration reloaded")
        await call()
        config.write_text(original.replace("status: any", "status: 9xx"))
        child.process.send_signal(signal.SIGHUP)
        await child.wait_for_log("reload refused")
        await call()
    assert await child.stop() == 0
    names = [name for name, _ in stored_events(tmp_path / "meterproxy.db")]
    assert names.count("api.request") == 2  # the refused file changed nothing
    assert "api.call" not in names


async def test_json_logs(upstream: tuple[Upstream, TestServer], tmp_path: Path) -> None:
    _, server = upstream
    config = write_config(tmp_path, f"http://127.0.0.1:{server.port}")
    child = await Server.start(config, "--log-format", "json")
    assert await child.stop() == 0
    lines = [json.loads(line) for line in child.log.read_text().splitlines() if line]
    listening = [entry for entry in lines if "listening on" in entry["message"]]
    assert {entry["level"] for entry in listening} == {"info"}
    assert len(listening) == 2


async def test_run_refuses_a_port_in_use(tmp_path: Path, unused_tcp_port: int) -> None:
    config = write_config(tmp_path, f"http://127.0.0.1:{unused_tcp_port}")
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    config.write_text(
        config.read_text().replace("listen: 127.0.0.1:0", f"listen: 127.0.0.1:{port}", 1)
    )
    code, _, err = await run_cli("run", "-c", str(config))
    blocker.close()
    assert code == 1
    assert "cannot start" in err


async def test_run_collects_garbage_on_the_tuned_schedule_unless_told_not_to(
    upstream: tuple[Upstream, TestServer], tmp_path: Path
) -> None:
    _, server = upstream
    tuned = write_config(tmp_path, f"http://127.0.0.1:{server.port}", name="tuned.yaml")
    child = await Server.start(tuned)
    assert await child.stop() == 0
    assert "young generation every 50000 net allocations" in child.log.read_text()
    default = write_config(tmp_path, f"http://127.0.0.1:{server.port}", proxy_extra="gc: default",
                           name="default.yaml")
    child = await Server.start(default)
    assert await child.stop() == 0
    assert "young generation" not in child.log.read_text()
