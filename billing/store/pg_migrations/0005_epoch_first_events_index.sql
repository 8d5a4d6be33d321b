-- The events index starts with the event's epoch (billing/store/epochs.py): appends then write
-- only in the newest epoch's part of it, which stays cached, instead of a page per customer
-- all over an index that outgrows the cache. Reads seek once per epoch whose timestamps meet
-- their range, found in event_epochs. Building the index reads the whole events table, and
-- appends wait for it (schema lock).

-- An expression, not a column: nothing more stored per event. Queries write it exactly so.
CREATE INDEX events_by_epoch_customer_name_time
    ON events ((seq >> 18), customer_id, event_name, timestamp_ms);
DROP INDEX events_by_customer_name_time;

-- Every stored event's timestamp lies in its epoch's [min_ts_ms, max_ts_ms]: each append
-- widens the rows of its epochs in its own transaction, under the ingest counter's lock.
CREATE TABLE event_epochs (
    epoch     bigint PRIMARY KEY,
    min_ts_ms bigint NOT NULL,
    max_ts_ms bigint NOT NULL
);
INSERT INTO event_epochs (epoch, min_ts_ms, max_ts_ms)
    SELECT seq >> 18, min(timestamp_ms), max(timestamp_ms) FROM events GROUP BY 1;
