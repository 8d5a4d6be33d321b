-- Fleet mode: the meter policy of billing/store/pg_meters.py (replicas of a rolling deploy may
-- run different meter definitions on one database, and none rebuilds another's aggregates),
-- and a cheaper append.

-- A meter's aggregates are complete while every append since they were built folded its
-- events. An append by a replica that does not fold the meter (it configures another
-- definition, or none) clears the flag in the append's own transaction; billing refuses to
-- read an incomplete meter until `meterproxy rebuild` rebuilds it.
ALTER TABLE meter_state ADD COLUMN complete boolean NOT NULL DEFAULT true;

-- Bumped whenever meter_state's definitions change (a meter built, rebuilt or dropped), in the
-- transaction that changes them while it holds this row's lock. Appends read it with the
-- counter they lock anyway, so a replica learns of another's change at its next append.
ALTER TABLE ingest_counter ADD COLUMN meters_version bigint NOT NULL DEFAULT 0;

-- The watermark is ingest_counter's, and late usage is found through events_late (0002): no
-- query reads events by ingested_at alone, and every append paid for this index.
DROP INDEX events_by_ingested_at;

-- Rollup rows are kept only for sealed days, those before rollups_until; the buckets of later
-- days have none (billing/store/pg_rollups.py). Nothing is sealed yet: the first append seals
-- every day that ended long enough ago, from the bucket rows.
ALTER TABLE ingest_counter ADD COLUMN rollups_until bigint NOT NULL
    DEFAULT -9223372036854775808;
DELETE FROM meter_aggregates AS a USING meter_state AS s
    WHERE a.meter = s.meter AND a.size_ms = s.rollup_ms;

-- Billing reads a customer's rollup rows of a period, then the bucket rows at its edges. With
-- the span size before the start in the key, each is one contiguous range of the index; in
-- the old order the rollup range also walked every bucket row inside it.
ALTER TABLE meter_aggregates DROP CONSTRAINT meter_aggregates_pkey;
ALTER TABLE meter_aggregates ADD PRIMARY KEY (meter, customer_id, size_ms, bucket_start_ms);
