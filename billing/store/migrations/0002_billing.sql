-- Billing: plan history, plan cycles, credit grants, statements with their credit burns,
-- manual adjustments, and the index that finds late usage.

-- A customer's plan from effective_from_ms on (plan NULL: billing.default_plan). A change is
-- recorded at the end of the customer's current period, so every period has one plan.
CREATE TABLE plan_assignments (
    customer_id       TEXT    NOT NULL REFERENCES customers (id),
    effective_from_ms INTEGER NOT NULL,
    plan              TEXT,
    assigned_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (customer_id, effective_from_ms)
) STRICT, WITHOUT ROWID;

-- Plans set before this migration applied from the customer's creation.
INSERT INTO plan_assignments (customer_id, effective_from_ms, plan, assigned_at_ms)
    SELECT id, created_at_ms, plan, created_at_ms FROM customers WHERE plan IS NOT NULL;

-- Each plan's cycle and time zone as configured from effective_from_ms on. A period uses the
-- definition in force at its start: a new cycle starts at the end of the current period.
CREATE TABLE plan_cycles (
    plan              TEXT    NOT NULL,
    effective_from_ms INTEGER NOT NULL,
    cycle             TEXT    NOT NULL,
    timezone          TEXT    NOT NULL,
    PRIMARY KEY (plan, effective_from_ms)
) STRICT, WITHOUT ROWID;

-- credits and amounts are Decimal text (exact).
CREATE TABLE credit_grants (
    customer_id     TEXT    NOT NULL REFERENCES customers (id),
    grant_id        TEXT    NOT NULL,
    meter           TEXT    NOT NULL,
    credits         TEXT    NOT NULL,
    effective_at_ms INTEGER NOT NULL,
    expires_at_ms   INTEGER,
    created_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (customer_id, grant_id)
) STRICT, WITHOUT ROWID;

-- One statement per customer and period start. `record` holds the statement with every input
-- it was computed from (billing/records.py), so `verify` can recompute it; the other columns
-- are what the engine and the listings query. rollover: JSON {meter: "credits"}.
CREATE TABLE statements (
    id              TEXT    PRIMARY KEY,
    customer_id     TEXT    NOT NULL REFERENCES customers (id),
    period_start_ms INTEGER NOT NULL,
    period_end_ms   INTEGER NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('draft', 'final')),
    cutoff_ms       INTEGER NOT NULL,
    plan            TEXT    NOT NULL,
    currency        TEXT    NOT NULL,
    total_minor     INTEGER NOT NULL,
    rollover        TEXT    NOT NULL,
    finalized_at_ms INTEGER CHECK ((status = 'final') = (finalized_at_ms IS NOT NULL)),
    record          TEXT    NOT NULL,
    UNIQUE (customer_id, period_start_ms)
) STRICT;

CREATE INDEX statements_by_status ON statements (status, customer_id, period_start_ms);
CREATE INDEX statements_by_finalization ON statements (finalized_at_ms, id);

CREATE TRIGGER final_statements_never_change BEFORE UPDATE ON statements
WHEN OLD.status = 'final'
BEGIN
    SELECT RAISE(ABORT, 'a final statement never changes');
END;

CREATE TRIGGER final_statements_stay BEFORE DELETE ON statements
WHEN OLD.status = 'final'
BEGIN
    SELECT RAISE(ABORT, 'a final statement is never deleted');
END;

-- Credits of API grants burned by each statement; a draft's are replaced with the draft.
CREATE TABLE credit_burns (
    statement_id TEXT NOT NULL REFERENCES statements (id),
    customer_id  TEXT NOT NULL,
    grant_id     TEXT NOT NULL,
    credits      TEXT NOT NULL,
    PRIMARY KEY (statement_id, grant_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX credit_burns_by_customer ON credit_burns (customer_id, grant_id);

CREATE TRIGGER final_burns_stay BEFORE DELETE ON credit_burns
WHEN (SELECT status FROM statements WHERE id = OLD.statement_id) = 'final'
BEGIN
    SELECT RAISE(ABORT, 'the credit burns of a final statement are permanent');
END;

-- statement_id: the final statement that took the adjustment (NULL: not billed yet).
CREATE TABLE manual_adjustments (
    customer_id   TEXT    NOT NULL REFERENCES customers (id),
    adjustment_id TEXT    NOT NULL,
    amount        TEXT    NOT NULL,
    description   TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    statement_id  TEXT    REFERENCES statements (id),
    PRIMARY KEY (customer_id, adjustment_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX manual_adjustments_pending ON manual_adjustments (customer_id)
    WHERE statement_id IS NULL;

-- Late usage is an event ingested after a final statement's cutoff with a timestamp inside its
-- period. A final statement's cutoff is taken at least grace_period after its period ended, so
-- such an event waited long between its timestamp and its ingestion. Only events that waited
-- over 5 minutes enter this index, so it costs the hot path (events flushed within
-- milliseconds) nothing; billing/store/sqlite_ledger.py reads the rest from the events index.
CREATE INDEX events_late ON events (customer_id, ingested_at_ms)
    WHERE ingested_at_ms - timestamp_ms > 300000;
