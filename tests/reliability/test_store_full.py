"""A full disk: proxying goes on, events queue in memory up to a bound, then 503; once
there is room again the queue drains and nothing queued is lost.

The database lives on a small tmpfs mounted for the test (root is needed to mount; the
CI machine runs as root). The disk is filled with a junk file and freed by deleting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from proxy.config import load_config
from tests.conftest import StartProxy, write_config
from tests.proxy.upstream import Upstream

CUSTOMER = {"X-Customer-Id": "acme"}


@contextlib.contextmanager
def small_disk(path: Path, size: str = "8m") -> Iterator[Path]:
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        if os.environ.get("CI"):
            raise AssertionError(f"cannot mount a tmpfs under CI: {done.stderr}")
        pytest.skip(f"mounting a tmpfs needs root: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    junk = disk / "junk"
    with contextlib.suppress(OSError), junk.open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    return junk


async def test_a_full_disk_queues_then_refuses_then_drains(
    aiohttp_server: Any, start_proxy: StartProxy, tmp_path: Path
) -> None:
    up = Upstream()
    server: TestServer = await aiohttp_server(up.app())
    with small_disk(tmp_path / "disk") as disk:
        path = write_config(tmp_path, f"http://127.0.0.1:{server.port}")
        text = path.read_text().replace(str(tmp_path / "meterproxy.db"), str(disk / "m.db"))
        path.write_text(
            text.replace("  flush_interval: 10ms", "  flush_interval: 10ms\n  max_pending: 40")
        )
        running = await start_proxy("", config=load_config(path))
        url = running.proxy_url + "/v1/echo"
        async with running.session.get(url, headers=CUSTOMER) as r:
            assert r.status == 200
        await running.flush()
        junk = fill(disk)

        statuses = []
        for _ in range(30):  # 2 events each: the queue (40) fills after 20 exchanges
            async with running.session.get(url, headers=CUSTOMER) as r:
                statuses.append(r.status)
        assert statuses[:19] == [200] * 19  # proxying goes on while the disk is full
        assert statuses[-5:] == [503] * 5  # then refused rather than losing usage
        answered = statuses.count(200) + 1
        assert running.mp.writer.pending == 2 * (answered - 1)
        while running.metric("meterproxy_store_flush_errors_total") == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # the failing flush is still on the store's thread
        async with running.session.get(running.admin_url + "/readyz") as r:
            assert r.status == 503

        junk.unlink()  # room again: the queue drains
        await running.flush()
        assert running.mp.writer.pending == 0
        events = await running.events(page_size=100)
        assert len(events) == 2 * answered  # nothing queued was lost
        async with running.session.get(url, headers=CUSTOMER) as r:
            assert r.status == 200


async def test_on_full_drop_keeps_proxying_and_counts_what_it_drops(
    aiohttp_server: Any, start_proxy: StartProxy, tmp_path: Path
) -> None:
    up = Upstream()
    server: TestServer = await aiohttp_server(up.app())
    with small_disk(tmp_path / "disk") as disk:
        path = write_config(tmp_path, f"http://127.0.0.1:{server.port}")
        text = path.read_text().replace(str(tmp_path / "meterproxy.db"), str(disk / "m.db"))
        path.write_text(
            text.replace(
                "  flush_interval: 10ms",
                "  flush_interval: 10ms\n  max_pending: 40\n  on_full: drop",
            )
        )
        running = await start_proxy("", config=load_config(path))
        url = running.proxy_url + "/v1/echo"
        junk = fill(disk)
        statuses = []
        for _ in range(30):
            async with running.session.get(url, headers=CUSTOMER) as r:
                statuses.append(r.status)
        assert statuses == [200] * 30
        dropped = running.metric(
            "meterproxy_events_total", event_name="api.call", source="proxy", outcome="dropped"
        )
        assert dropped == 30 - 20  # 20 exchanges (40 events) fit the queue
        junk.unlink()
        await running.flush()
        assert len(await running.events(page_size=100)) == 40
