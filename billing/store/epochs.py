"""Epochs: how the events index stays cheap to write while the store grows.

Billing reads one customer's events of one name over a time range (the partial buckets at a
period's edges, late usage, audits), and the admin API lists a customer's events. An index
keyed (customer, name, time) serves them, but an append then writes a leaf of that index in a
different place for every customer it holds: with thousands of customers each event dirties
a page of its own, and once the index outgrows the cache each costs a read and a write.
Ingest at 16 clients, 10,000 customers, fell from 56,000 to 44,000 events/s on PostgreSQL
and from 55,000 to 23,000 on SQLite by 2.2M stored events (`python -m bench.ingest_growth`).

So the index key starts with the event's *epoch*, its seq shifted right by the engine's
epoch bits: appends write only in the newest epoch's part of the index, which stays cached,
and a read seeks once per epoch. `event_epochs` holds each epoch's timestamp range, widened
by every append in the append's own transaction, so a read seeks only the epochs whose
events may fall in its range: those that hold its time, and the few that took late events
from it.

How wide an epoch is trades the appends' writes against the reads' seeks. SQLite writes
every page an append dirtied to its log at each commit: with 2^18 events an epoch (migration
0005) the index part was about 2,300 pages and a 50 ms proxy flush of 260 events from 10,000
customers dirtied a page per event: insert and commit took 18.6 us per event; with 2^14
(migration 0006) the part is about 160 pages and they take 9.3 us (2026-12-07, ad hoc,
sqlite3 alone; 2^16: 13.8, 2^12: 7.8). A read over an hour of 10M events a day then seeks
about 25 epochs instead of 2. PostgreSQL logs each index insert as a small record rather than
the page, so its wider epochs cost its appends little and keep its reads' seeks few.

The shift is written into the schema (SQLite: the virtual column `events.epoch`;
PostgreSQL: the index expression `(seq >> 18)`): changing it takes a migration.
"""

from __future__ import annotations

from collections.abc import Sequence

from billing.events import UsageEvent

SQLITE_EPOCH_BITS = 14  # 16,384 events an epoch
PG_EPOCH_BITS = 18  # 262,144 events an epoch

# The epochs whose timestamp range meets [{start}, {end}): formats of SQL expressions.
_MEETING = "SELECT epoch FROM event_epochs WHERE min_ts_ms < {end} AND max_ts_ms >= {start}"


def epoch_ranges(
    first_seq: int, events: Sequence[UsageEvent], bits: int,
) -> list[tuple[int, int, int]]:
    """(epoch, earliest timestamp, latest timestamp) of the events numbered in order from
    `first_seq`, for each epoch of `bits` they fall in."""
    ranges = []
    index = 0
    while index < len(events):
        epoch = (first_seq + index) >> bits
        end = ((epoch + 1) << bits) - first_seq
        stamps = [e.timestamp_ms for e in events[index:end]]
        ranges.append((epoch, min(stamps), max(stamps)))
        index = end
    return ranges


def literal_bounds(start_ms: int | None, end_ms: int | None) -> tuple[str, str]:
    """An optional time filter [start_ms, end_ms) as SQL integer literals, unbounded where
    not given."""
    return (str(-(2**63) if start_ms is None else start_ms),
            str(2**63 - 1 if end_ms is None else end_ms))


def sqlite_in_epochs(events: str, start: str, end: str) -> str:
    """SQLite condition: the row of `events` (a table alias) is in an epoch whose timestamps
    meet [start, end) (SQL expressions)."""
    return f"{events}.epoch IN ({_MEETING.format(start=start, end=end)})"


def pg_in_epochs(events: str, start: str, end: str) -> str:
    """PostgreSQL condition, as `sqlite_in_epochs`. The epochs travel as an array: `= ANY`
    of an array is an index condition on the key's first column, one descent per epoch."""
    meeting = _MEETING.format(start=start, end=end)
    return f"({events}.seq >> {PG_EPOCH_BITS}) = ANY (ARRAY({meeting}))"
