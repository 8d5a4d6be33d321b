"""The billing scheduler: runs the statement engine whenever a statement falls due.

One loop, owned by the app as a task (cancel it to stop): run the engine, then sleep until
the next period end or grace end it reported (at most `max_sleep_s`, so a wall clock that
jumps is noticed), or until `wake()` (a DELETE ends a period now). A failed run is logged and
counted, never raised: the loop retries with capped exponential backoff, and the proxy keeps
serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from billing.engine import CloseResult
from billing.events import now_ms

log = logging.getLogger(__name__)


class Closer(Protocol):
    """The part of the engine the scheduler runs."""

    async def close(self, now_ms: int | None = None) -> CloseResult: ...


class Scheduler:
    """See the module docstring. `runs` counts finished runs, `errors` failed ones."""

    def __init__(self, engine: Closer, *, clock: Callable[[], int] = now_ms,
                 max_sleep_s: float = 900.0, retry_initial_s: float = 1.0,
                 retry_max_s: float = 60.0) -> None:
        self._engine = engine
        self._clock = clock
        self._max_sleep_s = max_sleep_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._woken = asyncio.Event()
        self._finished = asyncio.Condition()
        self.runs = 0
        self.errors = 0

    def wake(self) -> None:
        """Run again now (once the current run, if any, has finished)."""
        self._woken.set()

    async def run(self) -> None:
        """Run the engine forever; returns only by cancellation."""
        failures = 0
        while True:
            self._woken.clear()
            try:
                result = await self._engine.close()
            except Exception:
                failures += 1
                delay = min(self._retry_initial_s * 2 ** (failures - 1), self._retry_max_s)
                log.exception("billing run failed (%d in a row); retrying in %.0f s",
                              failures, delay)
                await self._finish(error=True)
            else:
                failures = 0
                delay = self._until(result.next_due_ms)
                if result.drafted or result.finalized:
                    log.info("billing run: %d drafted, %d finalized",
                             result.drafted, result.finalized)
                await self._finish(error=False)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):  # no helper task, unlike wait_for on 3.11
                    await self._woken.wait()

    async def finished(self, count: int) -> None:
        """Wait until `count` runs (successful or not) have finished in all."""
        async with self._finished:
            await self._finished.wait_for(lambda: self.runs + self.errors >= count)

    async def _finish(self, error: bool) -> None:
        async with self._finished:
            if error:
                self.errors += 1
            else:
                self.runs += 1
            self._finished.notify_all()

    def _until(self, due_ms: int | None) -> float:
        if due_ms is None:
            return self._max_sleep_s
        return min(max((due_ms - self._clock()) / 1000, 0.0), self._max_sleep_s)
