-- Billing: plan history, plan cycles, credit grants, statements with their credit burns,
-- manual adjustments, and the index that finds late usage; the same tables and columns as
-- SQLite's 0002, in PostgreSQL types. Credits and amounts stay Decimal text, as in SQLite:
-- NUMERIC would normalise "1E+3" to 1000, and the text is what statements and listings show.

-- A customer's plan from effective_from_ms on (plan NULL: billing.default_plan). A change is
-- recorded at the end of the customer's current period, so every period has one plan.
CREATE TABLE plan_assignments (
    customer_id       text   NOT NULL REFERENCES customers (id),
    effective_from_ms bigint NOT NULL,
    plan              text,
    assigned_at_ms    bigint NOT NULL,
    PRIMARY KEY (customer_id, effective_from_ms)
);

-- Plans set before this migration applied from the customer's creation.
INSERT INTO plan_assignments (customer_id, effective_from_ms, plan, assigned_at_ms)
    SELECT id, created_at_ms, plan, created_at_ms FROM customers WHERE plan IS NOT NULL;

-- Each plan's cycle and time zone as configured from effective_from_ms on. A period uses the
-- definition in force at its start: a new cycle starts at the end of the current period.
CREATE TABLE plan_cycles (
    plan              text   NOT NULL,
    effective_from_ms bigint NOT NULL,
    cycle             text   NOT NULL,
    timezone          text   NOT NULL,
    PRIMARY KEY (plan, effective_from_ms)
);

CREATE TABLE credit_grants (
    customer_id     text   NOT NULL REFERENCES customers (id),
    grant_id        text   NOT NULL,
    meter           text   NOT NULL,
    credits         text   NOT NULL,
    effective_at_ms bigint NOT NULL,
    expires_at_ms   bigint,
    created_at_ms   bigint NOT NULL,
    PRIMARY KEY (customer_id, grant_id)
);

-- One statement per customer and period start, whichever replica writes it. `record` holds
-- the statement with every input it was computed from (billing/records.py), so `verify` can
-- recompute it; the other columns are what the engine and the listings query.
CREATE TABLE statements (
    id              text   PRIMARY KEY,
    customer_id     text   NOT NULL REFERENCES customers (id),
    period_start_ms bigint NOT NULL,
    period_end_ms   bigint NOT NULL,
    status          text   NOT NULL CHECK (status IN ('draft', 'final')),
    cutoff_ms       bigint NOT NULL,
    plan            text   NOT NULL,
    currency        text   NOT NULL,
    total_minor     bigint NOT NULL,
    rollover        text   NOT NULL,
    finalized_at_ms bigint CHECK ((status = 'final') = (finalized_at_ms IS NOT NULL)),
    record          text   NOT NULL,
    UNIQUE (customer_id, period_start_ms)
);

CREATE INDEX statements_by_status ON statements (status, customer_id, period_start_ms);
CREATE INDEX statements_by_finalization ON statements (finalized_at_ms, id);

CREATE FUNCTION final_statements_never_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'a final statement is never deleted';
    END IF;
    RAISE EXCEPTION 'a final statement never changes';
END $$;

CREATE TRIGGER final_statements_never_change BEFORE UPDATE OR DELETE ON statements
    FOR EACH ROW WHEN (OLD.status = 'final') EXECUTE FUNCTION final_statements_never_change();

-- Credits of API grants burned by each statement; a draft's are replaced with the draft.
CREATE TABLE credit_burns (
    statement_id text NOT NULL REFERENCES statements (id),
    customer_id  text NOT NULL,
    grant_id     text NOT NULL,
    credits      text NOT NULL,
    PRIMARY KEY (statement_id, grant_id)
);

CREATE INDEX credit_burns_by_customer ON credit_burns (customer_id, grant_id);

-- A trigger's WHEN cannot hold a query: the function looks the statement up itself.
CREATE FUNCTION final_burns_stay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT status FROM statements WHERE id = OLD.statement_id) = 'final' THEN
        RAISE EXCEPTION 'the credit burns of a final statement are permanent';
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER final_burns_stay BEFORE UPDATE OR DELETE ON credit_burns
    FOR EACH ROW EXECUTE FUNCTION final_burns_stay();

-- statement_id: the final statement that took the adjustment (NULL: not billed yet).
CREATE TABLE manual_adjustments (
    customer_id   text   NOT NULL REFERENCES customers (id),
    adjustment_id text   NOT NULL,
    amount        text   NOT NULL,
    description   text   NOT NULL,
    created_at_ms bigint NOT NULL,
    statement_id  text   REFERENCES statements (id),
    PRIMARY KEY (customer_id, adjustment_id)
);

CREATE INDEX manual_adjustments_pending ON manual_adjustments (customer_id)
    WHERE statement_id IS NULL;

-- Late usage is an event ingested after a final statement's cutoff with a timestamp inside its
-- period. A final statement's cutoff is taken at least grace_period after its period ended, so
-- such an event waited long between its timestamp and its ingestion. Only events that waited
-- over 5 minutes enter this index, so it costs the hot path (events flushed within
-- milliseconds) nothing; billing/store/pg_snapshot.py reads the rest from the events index.
CREATE INDEX events_late ON events (customer_id, ingested_at_ms)
    WHERE ingested_at_ms - timestamp_ms > 300000;
