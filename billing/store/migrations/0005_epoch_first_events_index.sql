-- The events index starts with the event's epoch (billing/store/epochs.py): appends then write
-- only in the newest epoch's part of it, which stays cached, instead of a page per customer
-- all over an index that outgrows the cache. Reads seek once per epoch whose timestamps meet
-- their range, found in event_epochs.

-- seq >> 18, computed when read (no bytes stored). A column rather than an index expression:
-- SQLite matches an expression index against a constant only, not in a join.
ALTER TABLE events ADD COLUMN epoch INTEGER AS (seq >> 18) VIRTUAL;

-- The implicit trailing rowid (seq) orders a customer's events of one name and timestamp.
CREATE INDEX events_by_epoch_customer_name_time
    ON events (epoch, customer_id, event_name, timestamp_ms);
DROP INDEX events_by_customer_name_time;

-- Every stored event's timestamp lies in its epoch's [min_ts_ms, max_ts_ms]: each append
-- widens the rows of its epochs in its own transaction.
CREATE TABLE event_epochs (
    epoch     INTEGER PRIMARY KEY,
    min_ts_ms INTEGER NOT NULL,
    max_ts_ms INTEGER NOT NULL
) STRICT;
INSERT INTO event_epochs (epoch, min_ts_ms, max_ts_ms)
    SELECT epoch, MIN(timestamp_ms), MAX(timestamp_ms) FROM events GROUP BY epoch;
