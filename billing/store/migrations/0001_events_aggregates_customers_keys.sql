-- The first schema: raw events, per-meter aggregates, customers and their API keys.
-- STRICT tables: a wrong type is an error, not a silent conversion.

-- seq is the store-wide ingestion order (the rowid, so it costs no extra index);
-- metadata is a flat JSON object whose numbers are written exactly as their Decimal text.
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY,
    event_id       TEXT    NOT NULL UNIQUE,
    customer_id    TEXT    NOT NULL,
    event_name     TEXT    NOT NULL,
    timestamp_ms   INTEGER NOT NULL,
    metadata       TEXT    NOT NULL,
    source         TEXT    NOT NULL CHECK (source IN ('proxy', 'api')),
    ingested_at_ms INTEGER NOT NULL
) STRICT;

-- Billing reads one customer's events of one name over a time range; the implicit trailing
-- rowid also serves "newest first" (timestamp desc, seq desc) without a sort.
CREATE INDEX events_by_customer_name_time ON events (customer_id, event_name, timestamp_ms);
-- The watermark (max ingested_at) and late-event reads after a cutoff.
CREATE INDEX events_by_ingested_at ON events (ingested_at_ms);

-- One row per (meter, customer, span): the meter's fold over the events of that span.
-- A span is a bucket (size_ms = the bucket size) or a rollup of several buckets; ordered by
-- start, a rollup row sits beside its current bucket row, so updating both dirties one page.
-- value is Decimal text (exact); last_ts_ms/last_seq order `last` across spans.
CREATE TABLE meter_aggregates (
    meter           TEXT    NOT NULL,
    customer_id     TEXT    NOT NULL,
    bucket_start_ms INTEGER NOT NULL,
    size_ms         INTEGER NOT NULL,
    count           INTEGER NOT NULL,
    value           TEXT    NOT NULL,
    last_ts_ms      INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    PRIMARY KEY (meter, customer_id, bucket_start_ms, size_ms)
) STRICT, WITHOUT ROWID;

-- Metrics and period close read every customer of one meter over a bucket range.
CREATE INDEX meter_aggregates_by_bucket ON meter_aggregates (meter, bucket_start_ms);

-- What each meter's aggregates were built with; a difference on open triggers a rebuild.
CREATE TABLE meter_state (
    meter       TEXT    PRIMARY KEY,
    fingerprint TEXT    NOT NULL,
    bucket_ms   INTEGER NOT NULL,
    rollup_ms   INTEGER NOT NULL,
    built_at_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE customers (
    id            TEXT    PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    plan          TEXT,
    deleted_at_ms INTEGER
) STRICT;

-- Only a hash of each key is stored; prefix is the first characters shown in listings.
CREATE TABLE api_keys (
    key_id        TEXT    PRIMARY KEY,
    customer_id   TEXT    NOT NULL REFERENCES customers (id),
    key_hash      BLOB    NOT NULL UNIQUE,
    prefix        TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
) STRICT;

CREATE INDEX api_keys_by_customer ON api_keys (customer_id);

-- Bumped by every key change, so a proxy can poll one integer instead of reloading keys.
CREATE TABLE key_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
) STRICT;

INSERT INTO key_version (id, version) VALUES (1, 0);
