"""The event loop every meterproxy process runs on: uvloop where installed, else asyncio's.

Its own module so that the CLI and the store process's child share it without importing
each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run_event_loop(coro: Coroutine[Any, Any, int]) -> int:
    """Run `coro` to its exit code on uvloop where installed, else asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on every platform)
        return asyncio.run(coro)
    return uvloop.run(coro)
