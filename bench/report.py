"""The benchmark's output: one markdown table row per figure, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

COLUMNS = ("figure", "direct", "bare", "nginx", "meterproxy", "ratio / added", "target", "verdict")
NOT_MEASURED = "not measured yet"


@dataclass(frozen=True)
class Row:
    """One figure; "-" where a column does not apply to it."""

    figure: str
    direct: str = "-"
    bare: str = "-"
    nginx: str = "-"
    meterproxy: str = "-"
    result: str = "-"
    target: str = "-"
    verdict: str = "-"

    def cells(self) -> tuple[str, ...]:
        return (
            self.figure,
            self.direct,
            self.bare,
            self.nginx,
            self.meterproxy,
            self.result,
            self.target,
            self.verdict,
        )


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def render_table(rows: Iterable[Row]) -> str:
    """A GitHub markdown table; "|" inside a cell is escaped."""
    lines = [_line(COLUMNS), _line(("---",) * len(COLUMNS))]
    lines.extend(_line(row.cells()) for row in rows)
    return "\n".join(lines)


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_lines(generator: str, nginx: str) -> list[str]:
    """What the numbers came from, one markdown bullet per fact."""
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; kernel {platform.release()}",
        f"- Python {platform.python_version()}, aiohttp {version('aiohttp')}, "
        f"uvloop {version('uvloop')}; nginx: {nginx}",
        f"- load generator: {generator}",
    ]
