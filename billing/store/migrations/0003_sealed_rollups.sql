-- Rollup rows only for sealed days (billing/store/base.py, sqlite_write.seal): each meter's
-- rollups_until marks the end of its last sealed day. Below it every day with events has its
-- rollup row; from it on none has, and reads take the buckets.

ALTER TABLE meter_state ADD COLUMN rollups_until INTEGER NOT NULL
    DEFAULT -9223372036854775808;

-- Until now every day had its rollup row, kept whole by every append: the days before each
-- meter's latest rollup day stay sealed, the latest one (maybe still open) loses its rollup
-- and is sealed again from its buckets once it has ended.
UPDATE meter_state SET rollups_until = coalesce(
    (SELECT MAX(a.bucket_start_ms) FROM meter_aggregates AS a
     WHERE a.meter = meter_state.meter AND a.size_ms = meter_state.rollup_ms),
    rollups_until);

DELETE FROM meter_aggregates
WHERE EXISTS (SELECT 1 FROM meter_state AS s
              WHERE s.meter = meter_aggregates.meter
                AND meter_aggregates.size_ms = s.rollup_ms
                AND meter_aggregates.bucket_start_ms >= s.rollups_until);
