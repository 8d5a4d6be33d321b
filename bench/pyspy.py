"""Where meterproxy spends its time under load: py-spy samples the running process
(`record --format raw`: one line per distinct stack, `frame;frame;... count`), and the
frames are ranked by own time (samples in which the frame was the innermost one)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

RATE_HZ = 250


@dataclass(frozen=True)
class Frame:
    name: str  # "function (file:first line)"
    own: float  # share of samples with this frame innermost, 0..1
    total: float  # share of samples with this frame anywhere on the stack, 0..1


def py_spy() -> str | None:
    """py-spy next to this Python (the venv), else on PATH; None when not installed."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def top_frames(raw: str, n: int) -> list[Frame]:
    """The `n` frames with the most own time in py-spy raw output (ties: by name)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            total[frame] += int(count)
    ranked = sorted(own.items(), key=lambda item: (-item[1], item[0]))[:n]
    return [Frame(name, c / samples, total[name] / samples) for name, c in ranked]


def render(frames: list[Frame]) -> str:
    lines = ["| own | total | frame |", "| ---: | ---: | --- |"]
    lines.extend(f"| {f.own:.1%} | {f.total:.1%} | `{f.name}` |" for f in frames)
    return "\n".join(lines)


async def record(binary: str, pid: int, seconds: float, out: Path) -> str:
    """Sample `pid` for `seconds`; the raw stacks. RuntimeError when py-spy fails
    (e.g. no ptrace permission)."""
    process = await asyncio.create_subprocess_exec(
        binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", str(RATE_HZ), "--function", "--nonblocking", "--format", "raw",
        "--output", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"py-spy failed: {output.decode(errors='replace').strip()[-500:]}")
    return await asyncio.to_thread(out.read_text)
