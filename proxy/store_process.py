"""Appends of events in a process of their own (`storage.writer: process`; the default,
`thread`, runs them on the store's own thread in the proxy's process).

Storing an event (encoding, folding it into the aggregates, the SQLite or PostgreSQL
transaction) costs more CPU than everything else meterproxy does for it, and in the proxy's
process its Python parts hold the GIL the event loop needs. Where the proxy has a core to
spare, the child takes that work there; where it has not (one or two cores, or a CPU quota
counting both processes) the hand-off costs more than it saves (README, Benchmarks).

`AppendProcess` is the event writer's `Appender` in the proxy's process: it hands each
append to a child Python process (`python -m proxy.store_process`) that opens the same store
and runs its `append`, and it returns the child's answer. The writer, its queue, its
flush policy and its retries stay in the proxy's process.

Protocol, over the child's stdin and stdout (its stderr is the parent's, for its log lines):
frames of a 4-byte big-endian length and a pickle. The first frame is a `ChildSpec`; the
child answers ("ready",) once its store is open, or an error and exits. Then one
("append", rows, now_ms) at a time, answered by ("ok", encoded result) or
("error", kind, message, transient). At the end of its stdin the child closes its store
and exits; it ignores SIGINT and SIGTERM (a ^C or a `kill` of the process group must not
cut a flush short: the parent's shutdown decides when appends end).

A child that exits or breaks the protocol fails the append in flight with a transient
StoreError: the writer retries it with backoff (event ids make the repeat of a commit that
took place harmless) and the next append starts a new child.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from billing.events import UsageEvent
from billing.meters import Aggregate, Meter
from billing.store.base import AggregateDeltas, AppendResult, StoreError, is_transient
from billing.store.choice import store_at
from billing.store.pg_connection import StoreUnreachable
from proxy.event_loop import run_event_loop

log = logging.getLogger(__name__)

CHILD_COMMAND = (sys.executable, "-m", "proxy.store_process")
START_TIMEOUT_S = 60.0  # imports, migrations checked, meters compared, connections opened
_HEADER = struct.Struct(">I")

Row = tuple[str, str, str, int, Mapping[str, Any], str]  # a UsageEvent's fields, in order
# meter -> rows of (customer_id, bucket_start, count, value text, last_ts, last_seq)
DeltaRows = dict[str, list[tuple[str, int, int, str, int, int]]]


@dataclass(frozen=True)
class ChildSpec:
    """What the child needs to open the same store as the parent: PostgreSQL at `url`
    when set, else the SQLite file at `path`."""

    path: str
    url: str
    meters: tuple[Meter, ...]
    bucket_ms: int
    log_format: Literal["text", "json"] = "text"
    log_level: int = logging.INFO


class AppendProcess:
    """An `Appender` whose appends run in a child process (see the module docstring).

    One append at a time (the event writer never overlaps them; a lock keeps it so).
    `start` starts the child and waits until its store is open; `close` ends it.
    Raises StoreError from `start` when the child cannot open the store, and from
    `append` what the child's store raised, as the same kind of StoreError: StoreUnreachable
    stays StoreUnreachable, and `is_transient` answers as it did in the child.
    """

    def __init__(self, spec: ChildSpec, *, command: Sequence[str] = CHILD_COMMAND) -> None:
        self._spec = spec
        self._command = tuple(command)
        self._child: asyncio.subprocess.Process | None = None
        self._killed: list[asyncio.subprocess.Process] = []  # cancelled mid-exchange
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        """The running child's process id; None when none runs."""
        return self._child.pid if self._child is not None else None

    async def start(self) -> None:
        async with self._lock:
            await self._ensure_child()

    async def append(self, events: Sequence[UsageEvent], now_ms: int) -> AppendResult:
        rows = [(e.event_id, e.customer_id, e.event_name, e.timestamp_ms, e.metadata, e.source)
                for e in events]
        async with self._lock:
            child = await self._ensure_child()
            answer = await self._exchange(child, ("append", rows, now_ms))
        if answer[0] == "ok":
            return decode_result(answer[1])
        raise _error(answer)

    async def close(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 (a bound)
        """End the child: it finishes the append in flight, closes its store and exits;
        killed after `timeout` seconds."""
        async with self._lock:
            child, self._child = self._child, None
            killed, self._killed = self._killed, []
        if child is not None:
            await _end(child, timeout)
        for process in killed:
            await process.wait()

    async def _ensure_child(self) -> asyncio.subprocess.Process:
        if self._child is not None and self._child.returncode is None:
            return self._child
        if self._child is not None:
            log.warning("the store process exited (code %s); starting a new one",
                        self._child.returncode)
        self._child = None
        child = await asyncio.create_subprocess_exec(
            *self._command,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # out of the terminal's process group: ^C is the parent's
        )
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                answer = await self._exchange(child, self._spec)
        except BaseException:
            await _end(child, 0)
            raise
        self._child = child
        if answer[0] != "ready":  # the child lives on and tries again at the next append
            raise _error(answer)
        return child

    async def _exchange(self, child: asyncio.subprocess.Process, message: object) -> Any:
        """Send one frame and read the answer; a transient StoreError when the child is gone
        or speaks out of turn (it is then ended: the next call starts another)."""
        assert child.stdin is not None and child.stdout is not None
        try:
            child.stdin.write(frame(message))
            await child.stdin.drain()
            return await read_frame(child.stdout)
        except (OSError, EOFError, asyncio.IncompleteReadError, pickle.UnpicklingError) as exc:
            self._child = None
            await _end(child, 5.0)
            raise StoreError(f"the store process failed: {exc!r}", transient=True) from exc
        except asyncio.CancelledError:
            # Its answer would be taken for the next request's: this child is done for.
            self._child = None
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            self._killed.append(child)  # reaped by close()
            raise


async def _end(child: asyncio.subprocess.Process, timeout: float) -> None:  # noqa: ASYNC109
    """Close the child's stdin and wait for it to exit; kill it after `timeout` seconds."""
    if child.stdin is not None and not child.stdin.is_closing():
        child.stdin.close()
    try:
        async with asyncio.timeout(timeout):
            await child.wait()
    except TimeoutError:
        log.error("the store process did not exit within %.0f s; killing it", timeout)
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()


def _error(answer: tuple[Any, ...]) -> StoreError:
    """The StoreError an ("error", kind, message, transient) answer stands for."""
    _, kind, message, transient = answer
    if kind == "unreachable":
        return StoreUnreachable(message, transient=transient)
    return StoreError(message, transient=transient)


# ------------------------------------------------------------------ frames


def frame(message: object) -> bytes:
    """`message` as one frame: its pickle after a 4-byte big-endian length."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def read_frame(stream: asyncio.StreamReader) -> Any:
    """The next frame's object; asyncio.IncompleteReadError at the end of the stream."""
    (size,) = _HEADER.unpack(await stream.readexactly(_HEADER.size))
    return pickle.loads(await stream.readexactly(size))


# ------------------------------------------------------------------ results


def encode_result(result: AppendResult) -> tuple[Any, ...]:
    """`result` as plain values: quicker to pickle and unpickle than its objects."""
    deltas = result.deltas
    if deltas is None:
        return result.stored, dict(result.skipped), result.watermark, None
    rows: DeltaRows = {
        meter: [(customer, start, a.count, str(a.value), a.last_ts, a.last_seq)
                for (customer, start), a in cells.items()]
        for meter, cells in deltas.cells.items()
    }
    encoded = (deltas.after_ms, deltas.stamp_ms, deltas.bucket_ms, rows)
    return result.stored, dict(result.skipped), result.watermark, encoded


def decode_result(encoded: tuple[Any, ...]) -> AppendResult:
    stored, skipped, watermark, deltas = encoded
    if deltas is None:
        return AppendResult(stored, skipped, watermark)
    after_ms, stamp_ms, bucket_ms, rows = deltas
    by_meter = {
        meter: {(customer, start): Aggregate(count, Decimal(value), last_ts, last_seq)
                for customer, start, count, value, last_ts, last_seq in cells}
        for meter, cells in rows.items()
    }
    return AppendResult(stored, skipped, watermark,
                        AggregateDeltas(after_ms, stamp_ms, bucket_ms, by_meter))


# ------------------------------------------------------------------ the child


async def _serve_child() -> int:
    """The child's life: read the spec, open the store, answer appends until stdin ends.
    A store that fails to open is tried again at each append (PostgreSQL may be away)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**31 - 1)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # Answers go out on a copy of stdout; stdout itself becomes stderr, so that nothing
    # any library prints can come between two frames.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    spec = await read_frame(reader)
    _setup_child_logging(spec)
    store = store_at(spec.url, spec.path, spec.meters, spec.bucket_ms)
    opened = await _open(store, out, ("ready",))
    try:
        while True:
            try:
                _, rows, now_ms = await read_frame(reader)
            except asyncio.IncompleteReadError:
                return 0  # the parent closed our stdin: done
            if not opened and not (opened := await _open(store, out, None)):
                continue
            try:
                result = await store.append([UsageEvent(*row) for row in rows], now_ms)
            except Exception as exc:
                _answer(out, _failure(exc))
            else:
                _answer(out, ("ok", encode_result(result)))
    finally:
        await store.close()


async def _open(store: Any, out: Any, ready: object) -> bool:
    """Open the store; answer `ready` (if any) when it opened, the error when it did not."""
    try:
        await store.open()
    except Exception as exc:
        _answer(out, _failure(exc))
        await store.close()
        return False
    if ready is not None:
        _answer(out, ready)
    return True


def _answer(out: Any, message: object) -> None:
    out.write(frame(message))  # blocking: the parent waits for it anyway


def _failure(exc: Exception) -> tuple[str, str, str, bool]:
    if not isinstance(exc, StoreError):
        log.exception("the store process failed on an append")
    kind = "unreachable" if isinstance(exc, StoreUnreachable) else "error"
    return ("error", kind, str(exc) or repr(exc), is_transient(exc))


def _setup_child_logging(spec: ChildSpec) -> None:
    from proxy.logs import setup_logging

    setup_logging(spec.log_format, spec.log_level)


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    return run_event_loop(_serve_child())


if __name__ == "__main__":
    sys.exit(main())
