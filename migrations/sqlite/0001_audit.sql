-- One row per pass: what ran, over how many cases, and how it ended.
CREATE TABLE passes (
    id                TEXT PRIMARY KEY,
    started_at        TEXT NOT NULL,
    finished_at       TEXT,
    trigger_kind      TEXT NOT NULL,
    rules_fingerprint TEXT NOT NULL,
    dry_run           INTEGER NOT NULL,
    cases_seen        INTEGER NOT NULL DEFAULT 0,
    planned           INTEGER NOT NULL DEFAULT 0,
    applied           INTEGER NOT NULL DEFAULT 0,
    failed            INTEGER NOT NULL DEFAULT 0,
    skipped           INTEGER NOT NULL DEFAULT 0,
    status            TEXT NOT NULL,
    error             TEXT
);

-- The append-only, hash-chained record of every decision and outcome.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY,
    run_id       TEXT NOT NULL,
    recorded_at  TEXT NOT NULL,
    rule         TEXT NOT NULL,
    rule_hash    TEXT NOT NULL,
    case_id      TEXT NOT NULL,
    ticket_id    INTEGER,
    field        TEXT NOT NULL,
    old          TEXT,
    new          TEXT,
    reason       TEXT NOT NULL,
    dry_run      INTEGER NOT NULL,
    outcome      TEXT NOT NULL CHECK (outcome IN ('planned', 'applied', 'failed', 'skipped', 'unknown')),
    error        TEXT,
    http_status  INTEGER,
    planned_seq  INTEGER REFERENCES events(seq),
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);

CREATE INDEX events_case ON events (case_id, field);
CREATE INDEX events_rule ON events (rule);
CREATE INDEX events_recorded ON events (recorded_at);
CREATE INDEX events_run ON events (run_id);
CREATE INDEX events_planned ON events (planned_seq);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: events cannot be updated');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: events cannot be deleted');
END;
