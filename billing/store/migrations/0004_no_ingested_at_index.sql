-- The watermark (the largest ingested_at) is the ingested_at of the last event by seq:
-- every append stamps its events max(now, previous + 1) and numbers them after the last
-- seq, so ingested_at never decreases along seq, and the rowid finds it in one seek. No
-- other query reads events by ingested_at alone (late usage has events_late), and every
-- append paid for this index.
DROP INDEX events_by_ingested_at;
