"""Rollup rows of the PostgreSQL store, kept off the hot path.

A rollup row holds a day (ROLLUP_BUCKETS buckets) of one meter and customer, so that a month
reads about 30 rows instead of about 720. The SQLite engine updates the rollup of every bucket
an append touches, which doubles its aggregate writes. This engine keeps rollups only for
*sealed* days, those that end by `ingest_counter.rollups_until`:

- an append merges a rollup delta only for buckets of sealed days (late events); the buckets
  of the days still open carry none;
- an append whose stamp passes the end of the next day by SEAL_LAG_MS seals the days it
  passed: their rollup rows are computed from their bucket rows, server side, and
  rollups_until moves on. Appends, seals and rebuilds all hold the counter's row lock, so
  none sees a half-sealed day;
- reads use rollup rows only below rollups_until (`sealed_plan`), buckets elsewhere.

The invariant: each sealed day's rollup row is the merge of its bucket rows, and no later day
has a rollup row. The SQL merge of a day's buckets follows `billing.meters.merge`, ties
included (pg_aggregates.MERGED_VALUE).
"""

from __future__ import annotations

from collections.abc import Mapping

from billing.meters import Aggregate, AggregationType, Tally, as_aggregate
from billing.store.base import ROLLUP_BUCKETS, ReadPlan, bucket_start, merged
from billing.store.pg_aggregates import MERGED_LAST, MERGED_VALUE, DeltaRow, value_text
from billing.store.pg_connection import Connection

# A day is sealed this long after it ends, so that the usual late events (ingest within its
# window, streams that ran past midnight) reach its buckets before it has a rollup to update.
SEAL_LAG_MS = 2 * 3_600_000

# $1 meters, days [$2, $3), $4 bucket size, $5 rollup size; a negative bucket start floors too.
_DAY = "bucket_start_ms - mod(mod(bucket_start_ms, $5::bigint) + $5::bigint, $5::bigint)"
_SEAL = """
    INSERT INTO meter_aggregates (meter, customer_id, bucket_start_ms, size_ms, count, value,
                                  last_ts_ms, last_seq)
    SELECT meter, customer_id, {day}, $5::bigint, sum(count), {value}, {last}
    FROM meter_aggregates
    WHERE meter = ANY($1::text[]) AND bucket_start_ms >= $2::bigint
        AND bucket_start_ms < $3::bigint AND size_ms = $4::bigint
    GROUP BY meter, customer_id, {day}"""


def row_deltas(
    meter: str,
    kind: AggregationType,
    tallies: Mapping[tuple[str, int], Tally],
    bucket_ms: int,
    until_ms: int,
) -> list[DeltaRow]:
    """A meter's batch tallies keyed (customer_id, bucket_start) as row deltas: every
    bucket's, plus the rollup's of buckets in sealed days (before `until_ms`)."""
    rollup_ms = bucket_ms * ROLLUP_BUCKETS
    counts = kind == "count"
    rows: list[DeltaRow] = []
    rollups: dict[tuple[str, int], Aggregate] = {}
    for (customer_id, start), t in tallies.items():
        rows.append((meter, customer_id, start, bucket_ms, t.count,
                     value_text(t.count if counts else t.value), t.last_ts, t.last_seq))
        if start < until_ms:  # a late event: its day has a rollup row to keep whole
            key = (customer_id, bucket_start(start, rollup_ms))
            rollups[key] = merged(kind, rollups.get(key), as_aggregate(t))
    rows.extend((meter, customer_id, start, rollup_ms, a.count, value_text(a.value), a.last_ts,
                 a.last_seq) for (customer_id, start), a in rollups.items())
    return rows


def next_until(stamp_ms: int, until_ms: int, rollup_ms: int) -> int | None:
    """Where rollups_until moves once an append stamped `stamp_ms` (None: it stays)."""
    target = bucket_start(stamp_ms - SEAL_LAG_MS, rollup_ms)
    return target if target > until_ms else None


async def seal(conn: Connection, kinds: Mapping[str, AggregationType], bucket_ms: int,
               since_ms: int, until_ms: int) -> None:
    """Compute the rollup rows of the days in [since_ms, until_ms) for the meters in `kinds`
    from their bucket rows, and record `until_ms`. Call holding the counter's row lock, with
    since_ms the recorded rollups_until."""
    rollup_ms = bucket_ms * ROLLUP_BUCKETS
    for kind, sql in MERGED_VALUE.items():
        names = [name for name, k in kinds.items() if k == kind]
        if names:
            await conn.execute(_SEAL.format(day=_DAY, value=sql, last=MERGED_LAST), names,
                               since_ms, until_ms, bucket_ms, rollup_ms)
    await conn.execute("UPDATE ingest_counter SET rollups_until = $1", until_ms)


def sealed_plan(plan: ReadPlan, until_ms: int) -> ReadPlan:
    """`plan` reading rollup rows only for sealed days (before `until_ms`)."""
    if plan.rollups is None or plan.rollups[0] >= until_ms:
        return ReadPlan(plan.raw, plan.buckets, None)
    return ReadPlan(plan.raw, plan.buckets, (plan.rollups[0], min(plan.rollups[1], until_ms)))
