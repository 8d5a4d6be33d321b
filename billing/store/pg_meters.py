"""The fleet meter policy: which aggregates a replica builds and folds on the shared database,
and when billing must not read them.

`meter_state` records, per meter, the definition (fingerprint) and bucket size its shared
aggregates were built with, and whether they are complete. A single SQLite instance rebuilds
a meter whenever its own definition differs; replicas must not, or during a rolling deploy an
old and a new replica would rebuild the same aggregates back and forth at every restart, each
time from under the other's appends. So on PostgreSQL:

- opening builds only meters the database has no state for (new to the fleet);
- a replica folds into the shared aggregates only its meters built exactly as it defines
  them ("in sync"). A stored meter it does not fold (defined otherwise here, or not at all)
  would miss this replica's events: its first append after learning the state marks such
  meters incomplete, in the append's own transaction, so no event slips past the mark;
- billing (`refuse_if_stale`) refuses while any of this replica's meters is out of sync or
  incomplete, so no statement is read from aggregates that miss events or mix definitions.
  Proxying and storing events go on; the raw events are always complete;
- `meterproxy rebuild` (run with the configuration every replica runs, once they all do)
  rebuilds every configured meter from the raw events, marks it complete and drops the
  others; replicas check the state at every billing read, so billing resumes without a
  restart. A replica still on another definition marks the meter incomplete again at its
  next append, and billing stays off until the fleet agrees.

Every change of the built definitions bumps `ingest_counter.meters_version` while holding the
counter's lock; appends read the version with the counter they lock anyway, and re-read the
state (`adopt`) only when it moved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from billing.meters import Meter
from billing.store.base import ROLLUP_BUCKETS, StoreError
from billing.store.pg_connection import Connection

BuiltWith = tuple[str, str, int, int]  # (meter, fingerprint, bucket_ms, rollup_ms)

_STATE = "SELECT meter, fingerprint, bucket_ms, rollup_ms, complete FROM meter_state"
BUMP_VERSION = "UPDATE ingest_counter SET meters_version = meters_version + 1"


@dataclass(frozen=True, slots=True)
class StoredMeter:
    """A meter_state row: what the aggregates were built with, and whether every append
    since folded them."""

    built: BuiltWith
    complete: bool


@dataclass(frozen=True, slots=True)
class MeterSync:
    """What opening does: meters to build now, meters whose aggregates to drop, meters out of
    sync here (left alone) and foreign ones (stored, not configured here: kept)."""

    build: tuple[str, ...]
    drop: tuple[str, ...]
    stale: tuple[str, ...]
    foreign: tuple[str, ...]


def built_with(meter: Meter, bucket_ms: int) -> BuiltWith:
    """The meter_state row (less built_at and complete) of the meter's aggregates built now."""
    return (meter.name, meter.fingerprint(), bucket_ms, bucket_ms * ROLLUP_BUCKETS)


def plan_sync(
    stored: Mapping[str, StoredMeter], meters: Iterable[Meter], bucket_ms: int, rebuild_all: bool
) -> MeterSync:
    """The policy of the module docstring; `rebuild_all` (meterproxy rebuild) builds every
    configured meter and drops the others."""
    configured = {meter.name: built_with(meter, bucket_ms) for meter in meters}
    others = tuple(name for name in stored if name not in configured)
    if rebuild_all:
        return MeterSync(tuple(configured), others, (), ())
    new = tuple(name for name in configured if name not in stored)
    stale = tuple(name for name, built in configured.items()
                  if name in stored and stored[name].built != built)
    return MeterSync(new, (), stale, others)


async def stored_state(conn: Connection) -> dict[str, StoredMeter]:
    """meter -> its meter_state row."""
    return {row[0]: StoredMeter((row[0], row[1], int(row[2]), int(row[3])), row[4])
            for row in await conn.fetch(_STATE)}


def in_sync(stored: Mapping[str, StoredMeter], meters: Iterable[Meter],
            bucket_ms: int) -> frozenset[str]:
    """The names of `meters` whose stored aggregates were built exactly as they define them."""
    return frozenset(meter.name for meter in meters
                     if (s := stored.get(meter.name)) and s.built == built_with(meter, bucket_ms))


async def adopt(conn: Connection, meters: Iterable[Meter], bucket_ms: int) -> frozenset[str]:
    """The meters this replica folds from now on; every other stored meter is marked
    incomplete. Call in the append's transaction, holding the counter's lock."""
    stored = await stored_state(conn)
    folded = in_sync(stored, meters, bucket_ms)
    unfolded = [name for name, s in stored.items() if name not in folded and s.complete]
    if unfolded:
        await conn.execute("UPDATE meter_state SET complete = false WHERE meter = ANY($1::text[])",
                           unfolded)
    return folded


async def refuse_if_stale(conn: Connection, meters: Iterable[Meter], bucket_ms: int) -> None:
    """Raise StoreError naming this replica's meters whose shared aggregates billing must not
    read: built otherwise (or not at all) or incomplete."""
    stored = await stored_state(conn)
    listed = list(meters)
    folded = in_sync(stored, listed, bucket_ms)
    unusable = [m.name for m in listed if m.name not in folded or not stored[m.name].complete]
    if unusable:
        raise StoreError(
            f"not billing: the shared aggregates of meter(s) {', '.join(unusable)} were built"
            " with another definition or bucket size than this replica's, or miss events of a"
            " replica that meters otherwise; run `meterproxy rebuild` with the configuration"
            " every replica runs"
        )
