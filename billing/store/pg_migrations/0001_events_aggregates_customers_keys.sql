-- The first PostgreSQL schema: raw events, per-meter aggregates, customers and their API keys;
-- the same tables and columns as SQLite's 0001, in PostgreSQL types.

-- seq is the store-wide ingestion order, assigned from ingest_counter (not a sequence): dense,
-- in input order, and in commit order across replicas. metadata is a flat JSON object kept as
-- text, so numbers stay exactly as their Decimal text (jsonb would normalise them).
CREATE TABLE events (
    seq            bigint PRIMARY KEY,
    event_id       text   NOT NULL UNIQUE,
    customer_id    text   NOT NULL,
    event_name     text   NOT NULL,
    timestamp_ms   bigint NOT NULL,
    metadata       text   NOT NULL,
    source         text   NOT NULL CHECK (source IN ('proxy', 'api')),
    ingested_at_ms bigint NOT NULL
);

-- Billing reads one customer's events of one name over a time range, newest first.
CREATE INDEX events_by_customer_name_time ON events (customer_id, event_name, timestamp_ms, seq);
-- Late-event reads after a cutoff.
CREATE INDEX events_by_ingested_at ON events (ingested_at_ms);

-- The last seq and ingested_at handed out. Every append locks this row first and holds it to
-- its commit, so appends from all replicas commit in ingested_at order: a reader that sees
-- ingested_at W sees every event stored with ingested_at <= W. The row is the watermark.
CREATE TABLE ingest_counter (
    id             integer PRIMARY KEY CHECK (id = 1),
    last_seq       bigint  NOT NULL,
    ingested_at_ms bigint  NOT NULL
);

INSERT INTO ingest_counter (id, last_seq, ingested_at_ms) VALUES (1, 0, 0);

-- One row per (meter, customer, span): the meter's fold over the events of that span.
-- A span is a bucket (size_ms = the bucket size) or a rollup of several buckets; value is an
-- exact NUMERIC; last_ts_ms/last_seq order `last` across spans. Appends rewrite the current
-- rows constantly: free space in each page keeps those updates HOT (no index writes).
CREATE TABLE meter_aggregates (
    meter           text    NOT NULL,
    customer_id     text    NOT NULL,
    bucket_start_ms bigint  NOT NULL,
    size_ms         bigint  NOT NULL,
    count           bigint  NOT NULL,
    value           numeric NOT NULL,
    last_ts_ms      bigint  NOT NULL,
    last_seq        bigint  NOT NULL,
    PRIMARY KEY (meter, customer_id, bucket_start_ms, size_ms)
) WITH (fillfactor = 70);

-- Metrics and period close read every customer of one meter over a bucket range. The index
-- holds the whole key, so that a probe for one row is exact through either index (the
-- planner picks this one for appends' batch lookups while the table's statistics are young).
CREATE INDEX meter_aggregates_by_bucket
    ON meter_aggregates (meter, bucket_start_ms, size_ms, customer_id);

-- What each meter's aggregates were built with; a difference on open triggers a rebuild.
CREATE TABLE meter_state (
    meter       text   PRIMARY KEY,
    fingerprint text   NOT NULL,
    bucket_ms   bigint NOT NULL,
    rollup_ms   bigint NOT NULL,
    built_at_ms bigint NOT NULL
);

CREATE TABLE customers (
    id            text   PRIMARY KEY,
    created_at_ms bigint NOT NULL,
    plan          text,
    deleted_at_ms bigint
);

-- Only a hash of each key is stored; prefix is the first characters shown in listings.
CREATE TABLE api_keys (
    key_id        text   PRIMARY KEY,
    customer_id   text   NOT NULL REFERENCES customers (id),
    key_hash      bytea  NOT NULL UNIQUE,
    prefix        text   NOT NULL,
    created_at_ms bigint NOT NULL,
    revoked_at_ms bigint
);

CREATE INDEX api_keys_by_customer ON api_keys (customer_id);

-- Bumped by every key change, so a proxy can poll one integer instead of reloading keys.
CREATE TABLE key_version (
    id      integer PRIMARY KEY CHECK (id = 1),
    version bigint  NOT NULL
);

INSERT INTO key_version (id, version) VALUES (1, 0);
