"""The event writer: one queue, one writer loop, one store transaction per flush.

The proxy calls `submit` on its hot path (no await, no task, O(1) per event); the ingest API
awaits `submit_durable`, which shares the same group commit and resolves once the events'
transaction committed. `run` is the only writer loop; the app owns it as a task. A flush is
due when `flush_interval` has passed since the oldest queued event arrived or `max_batch`
events are queued, whichever comes first. A flush takes up to `max_batch` events, and up to
`max_flush` for submissions someone awaits (they all ride the next commit instead of one
commit each) and when a backlog of `max_flush` events has built up: the cost of a commit
grows with the rows it touches, not with its events, so larger commits drain faster.

When the store fails, the observer hears of every failed attempt and what happens next
depends on the kind of failure (billing.store.base.is_transient):

- transient (disk full, read-only file or database, a lock held, the connection lost): the
  store may take the same events later. They stay in memory and the flush is retried with
  capped exponential backoff; the queue drains once the store accepts writes again.
  Meanwhile a queue that reaches `max_pending` applies `on_full`: "reject" raises
  StoreUnavailable (the proxy answers 503), "drop" drops and counts.
- anything else is a data error: some event of the flush can never be stored, and retrying
  it as it is would stall every later event. The flush is retried once; failing again, it is
  split in halves, each stored on its own, and a failing half split again, until the events
  that fail alone are found. Those are rejected (logged with their event_id, counted with
  outcome "rejected"), the others stored; a durable submitter of a rejected event gets
  EventsRejected, the others their results.

Exceptions:
    StoreUnavailable -- the writer takes no more events: the queue is full or it is closing.
    EventsRejected   -- the store refused some of a durable submission's events for what
                        they hold; its other events were stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from billing.events import UsageEvent, now_ms
from billing.store.base import AppendResult, is_transient

_log = logging.getLogger(__name__)

OnFull = Literal["reject", "drop"]
OutcomeCounts = Mapping[tuple[str, str, str], int]  # (event_name, source, outcome) -> events


class StoreUnavailable(Exception):
    """The writer cannot take these events: its queue is full or it is closing."""


class EventsRejected(Exception):
    """The store refused these events of a submission for what they hold (not for its own
    condition): `event_ids` names them, `error` is the store's last refusal. The
    submission's other events were stored."""

    def __init__(self, event_ids: Sequence[str], error: Exception) -> None:
        self.event_ids = tuple(event_ids)
        self.error = error
        super().__init__(f"the store refused event(s) {', '.join(self.event_ids)}: {error}")


class Appender(Protocol):
    """The part of `Store` the writer needs."""

    async def append(self, events: Sequence[UsageEvent], now_ms: int) -> AppendResult: ...


class WriterObserver(Protocol):
    """Hears what the writer does (the proxy turns it into Prometheus metrics)."""

    def on_flush(self, events_count: int, duration_s: float) -> None:
        """A flush committed `events_count` events in `duration_s` (its last attempt)."""

    def on_flush_error(self, exc: Exception) -> None:
        """A flush attempt failed; it will be retried."""

    def on_stored(self, counts: OutcomeCounts) -> None:
        """Events by (event_name, source, outcome): stored | duplicate | rejected | dropped."""

    def on_skipped(self, meter: str, reason: str, n: int) -> None:
        """n newly stored events were left out of `meter` (reason missing | not_numeric)."""


class _NoObserver:
    def on_flush(self, events_count: int, duration_s: float) -> None:
        pass

    def on_flush_error(self, exc: Exception) -> None:
        pass

    def on_stored(self, counts: OutcomeCounts) -> None:
        pass

    def on_skipped(self, meter: str, reason: str, n: int) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _Submission:
    events: Sequence[UsageEvent]
    future: asyncio.Future[AppendResult] | None  # set by submit_durable only
    queued_at: float  # event loop time


@dataclass(frozen=True, slots=True)
class _Stored:
    """What storing a run of events came to: `result` flags every event (False for the
    rejected ones too), `rejected` maps the index of each rejected event to its error."""

    result: AppendResult
    rejected: Mapping[int, Exception]

    def then(self, later: _Stored) -> _Stored:
        """This run followed by `later` as one."""
        offset = len(self.result.stored)
        skipped = Counter(self.result.skipped)
        skipped.update(later.result.skipped)
        result = AppendResult(self.result.stored + later.result.stored, skipped,
                              max(self.result.watermark, later.result.watermark))
        rejected = {**self.rejected, **{offset + i: e for i, e in later.rejected.items()}}
        return _Stored(result, rejected)


def _rejected_one(error: Exception) -> _Stored:
    return _Stored(AppendResult((False,), {}, 0), {0: error})


class EventWriter:
    """Queues usage events and stores them in group commits; see the module docstring.

    `clock` gives the wall time in ms that stamps each flush (`ingested_at`); flush
    durations for the observer are measured with time.perf_counter. A flush takes whole
    submissions, so one append exceeds its limit (`max_batch`, or `max_flush`: see the module
    docstring) only for a larger single submission.
    """

    def __init__(
        self,
        store: Appender,
        flush_interval_ms: int,
        *,
        max_batch: int = 1000,
        max_flush: int = 10_000,
        max_pending: int = 100_000,
        on_full: OnFull = "reject",
        observer: WriterObserver | None = None,
        clock: Callable[[], int] = now_ms,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 5.0,
    ) -> None:
        self._store = store
        self._interval_s = flush_interval_ms / 1000
        self._max_batch = max_batch
        self._max_flush = max(max_flush, max_batch)
        self._max_pending = max_pending
        self._on_full = on_full
        self._observer: WriterObserver = observer or _NoObserver()
        self._clock = clock
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._queue: deque[_Submission] = deque()
        self._queued = 0  # events in the queue
        self._durable_queued = 0  # queued submissions that someone awaits: flush at once
        self._in_flight: list[_Submission] = []  # the flush being stored
        self._in_flight_count = 0  # events in _in_flight
        self._failing = False
        self._closing = False
        self._wake = asyncio.Event()  # the loop may have a flush to do
        self._give_up = asyncio.Event()  # close() timed out
        self._stopped = asyncio.Event()  # run() returned
        # The running loop, looked up once: asyncio.get_running_loop() costs a getpid()
        # syscall per call on 3.11, and submit runs once per proxied exchange.
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pending(self) -> int:
        """Events accepted and not yet durable (queued or being flushed)."""
        return self._queued + self._in_flight_count

    @property
    def failing(self) -> bool:
        """True from a failed flush until the next successful one."""
        return self._failing

    def accepting(self) -> bool:
        """Whether submit would take an event now (the proxy checks before the upstream)."""
        return not self._closing and self.pending < self._max_pending

    def submit(self, events: Sequence[UsageEvent]) -> None:
        """Queue events to be stored within flush_interval; never blocks, never awaits.

        When the queue is full: on_full "drop" drops them (counted as dropped), "reject"
        raises StoreUnavailable (counted as rejected). Also raises StoreUnavailable once
        close() has begun.
        """
        if not events:
            return
        if self._has_room(len(events)):
            self._enqueue(_Submission(events, None, self._running_loop().time()))
        elif self._on_full == "drop" and not self._closing:
            self._observer.on_stored(_outcomes(events, "dropped"))
        else:
            raise self._rejected(events)

    async def submit_durable(self, events: Sequence[UsageEvent]) -> AppendResult:
        """Queue events and return once their transaction committed: which were newly stored.

        Raises StoreUnavailable (nothing queued) when the queue is full whatever on_full
        says, or once close() has begun, or when close() gave up before storing them.
        """
        if not self._has_room(len(events)):
            raise self._rejected(events)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AppendResult] = loop.create_future()
        self._enqueue(_Submission(events, future, loop.time()))
        return await future

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The running event loop (the one of the last call that found it running)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _has_room(self, count: int) -> bool:
        return not self._closing and self.pending + count <= self._max_pending

    def _rejected(self, events: Sequence[UsageEvent]) -> StoreUnavailable:
        self._observer.on_stored(_outcomes(events, "rejected"))
        return StoreUnavailable("closing" if self._closing else "the event queue is full")

    def _enqueue(self, submission: _Submission) -> None:
        was_empty = not self._queue
        self._queue.append(submission)
        self._queued += len(submission.events)
        if submission.future is not None:
            self._durable_queued += 1
        if was_empty or submission.future is not None or self._queued >= self._max_batch:
            self._wake.set()

    # ------------------------------------------------------------------- the loop

    async def run(self) -> None:
        """The writer loop. Returns after close() has flushed everything or given up;
        on return (or cancellation) durable submitters still waiting get StoreUnavailable."""
        try:
            while not self._give_up.is_set() and not (self._closing and not self._queue):
                await self._wait_until_due()
                if self._queue and not self._give_up.is_set():
                    await self._flush(self._take())
        finally:
            self._abandon_all()
            self._stopped.set()

    async def close(self, timeout: float) -> int:  # noqa: ASYNC109 (a bound, not a cancel)
        """Flush everything pending, then make run() return; wait at most `timeout` seconds.

        Returns how many events were not stored in time (0: all are durable); those are
        given up (logged). From the call on, submits raise StoreUnavailable.
        """
        self._closing = True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                await self._stopped.wait()
        except TimeoutError:
            lost = self.pending
            _log.error("gave up on %d unstored events after %.1fs of shutdown", lost, timeout)
            self._give_up.set()
            return lost
        return 0

    async def _wait_until_due(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._due(loop.time()):
            self._wake.clear()
            deadline = self._queue[0].queued_at + self._interval_s if self._queue else None
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _due(self, now: float) -> bool:
        if self._closing or self._give_up.is_set():
            return True
        if not self._queue:
            return False
        # Someone awaits durability (ingest, strict mode): flush now. Submissions that
        # arrive while this flush runs share the next one, so commits still group.
        return (
            self._durable_queued > 0
            or self._queued >= self._max_batch
            or now >= self._queue[0].queued_at + self._interval_s
        )

    def _take(self) -> list[_Submission]:
        """Whole submissions from the front (at least one), in order: up to max_batch events,
        or max_flush for awaited submissions and when as many are queued."""
        limit = self._max_flush if self._queued >= self._max_flush else self._max_batch
        taken: list[_Submission] = []
        count = 0
        while self._queue:
            submission = self._queue[0]
            room = self._max_flush if submission.future is not None else limit
            if taken and count + len(submission.events) > room:
                break
            self._queue.popleft()
            taken.append(submission)
            count += len(submission.events)
            if submission.future is not None:
                self._durable_queued -= 1
        self._queued -= count
        self._in_flight, self._in_flight_count = taken, count
        return taken

    async def _flush(self, taken: list[_Submission]) -> None:
        """Store one batch, retrying until it commits (poison events set aside, see the
        module docstring) or close() gives up."""
        events = [event for submission in taken for event in submission.events]
        started = time.perf_counter()
        done = await self._store_all(events)
        if done is None:  # close() gave up
            return
        self._in_flight, self._in_flight_count = [], 0
        self._observer.on_flush(len(events) - len(done.rejected), time.perf_counter() - started)
        self._report(events, done)
        _resolve(taken, done)

    async def _store_all(self, events: Sequence[UsageEvent]) -> _Stored | None:
        """Store the events, or all but those the store refuses alone; None when close()
        gave up meanwhile."""
        tried = await self._attempt(events, retry_data_error=True)
        if isinstance(tried, Exception):
            return await self._bisect(events, tried)
        return tried

    async def _bisect(self, events: Sequence[UsageEvent], error: Exception) -> _Stored | None:
        """Store events that failed together with a data error half by half, down to the
        single events that fail alone (rejected); None when close() gave up."""
        if len(events) == 1:
            return _rejected_one(error)
        done: _Stored | None = None
        middle = len(events) // 2
        for half in (events[:middle], events[middle:]):
            tried = await self._attempt(half, retry_data_error=False)
            if isinstance(tried, Exception):
                tried = await self._bisect(half, tried)
            if tried is None:
                return None
            done = tried if done is None else done.then(tried)
        return done

    async def _attempt(
        self, events: Sequence[UsageEvent], *, retry_data_error: bool
    ) -> _Stored | Exception | None:
        """One append of `events`, retried with backoff while the store fails transiently
        (and once after a data error with `retry_data_error`): what it stored, the data
        error that stopped it, or None when close() gave up."""
        delay = self._retry_initial_s
        while True:
            try:
                result = await self._store.append(events, self._clock())
            except Exception as exc:
                transient = is_transient(exc)
                self._on_error(exc, len(events), delay, transient)
                if not transient and not retry_data_error:
                    return exc
                retry_data_error = retry_data_error and transient
            else:
                self._failing = False
                return _Stored(result, {})
            if await self._gave_up_within(delay):
                return None
            delay = min(delay * 2, self._retry_max_s)

    def _on_error(self, exc: Exception, count: int, delay: float, transient: bool) -> None:
        self._observer.on_flush_error(exc)
        if transient:
            self._failing = True
            _log.warning("storing %d events failed (%s); retrying in %.2fs", count, exc, delay)
        else:
            _log.warning("storing %d events failed for what they hold (%s); retrying, then"
                         " storing them in halves to find the events at fault", count, exc)

    async def _gave_up_within(self, delay_s: float) -> bool:
        """Sleep for the backoff delay; True (at once) if close() gives up meanwhile."""
        try:
            async with asyncio.timeout(delay_s):
                await self._give_up.wait()
        except TimeoutError:
            return False
        return True

    def _report(self, events: Sequence[UsageEvent], done: _Stored) -> None:
        for index, error in done.rejected.items():
            e = events[index]
            _log.error("event %s (%s of customer %s) can never be stored, rejected: %s",
                       e.event_id, e.event_name, e.customer_id, error)
        counts: Counter[tuple[str, str, str]] = Counter(
            (e.event_name, e.source,
             "rejected" if i in done.rejected else "stored" if stored else "duplicate")
            for i, (e, stored) in enumerate(zip(events, done.result.stored, strict=True))
        )
        self._observer.on_stored(counts)
        for (meter, reason), n in done.result.skipped.items():
            self._observer.on_skipped(meter, reason, n)

    def _abandon_all(self) -> None:
        """Fail the durable submitters of everything not stored (the loop is ending)."""
        error = StoreUnavailable("the writer stopped before these events were stored")
        for submission in (*self._in_flight, *self._queue):
            if submission.future is not None and not submission.future.done():
                submission.future.set_exception(error)


def _outcomes(events: Sequence[UsageEvent], outcome: str) -> OutcomeCounts:
    counts: Counter[tuple[str, str, str]] = Counter(
        (e.event_name, e.source, outcome) for e in events
    )
    return counts


def _resolve(taken: list[_Submission], done: _Stored) -> None:
    """Give each durable submission its slice of the flush's result, or EventsRejected when
    the store refused any of its events."""
    offset = 0
    for submission in taken:
        end = offset + len(submission.events)
        future = submission.future
        if future is not None and not future.done():
            refused = [i for i in range(offset, end) if i in done.rejected]
            if refused:
                ids = [submission.events[i - offset].event_id for i in refused]
                future.set_exception(EventsRejected(ids, done.rejected[refused[-1]]))
            else:
                future.set_result(done.result.part(offset, end))
        offset = end
