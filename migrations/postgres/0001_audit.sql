-- The audit log in PostgreSQL, for replicas sharing one record: the same tables, columns
-- and append-only guarantees as the SQLite log (migrations/sqlite 0001-0008), in one step.

-- One row per pass: what ran, over how many cases, and how it ended. A finished row is
-- sealed: its hash covers every field and the events chain head when it finished.
CREATE TABLE passes (
    id                TEXT PRIMARY KEY,
    started_at        TEXT NOT NULL,
    finished_at       TEXT,
    trigger_kind      TEXT NOT NULL,
    rules_fingerprint TEXT NOT NULL,
    dry_run           BOOLEAN NOT NULL,
    cases_seen        BIGINT NOT NULL DEFAULT 0,
    planned           BIGINT NOT NULL DEFAULT 0,
    applied           BIGINT NOT NULL DEFAULT 0,
    failed            BIGINT NOT NULL DEFAULT 0,
    skipped           BIGINT NOT NULL DEFAULT 0,
    status            TEXT NOT NULL,
    error             TEXT,
    chain_head        TEXT,
    hash              TEXT,
    instance          TEXT
);

-- The append-only, hash-chained record of every decision and outcome. `tenant`,
-- `instance` and `epoch` are part of a row's hash when set.
CREATE TABLE events (
    seq          BIGINT PRIMARY KEY,
    run_id       TEXT NOT NULL,
    recorded_at  TEXT NOT NULL,
    rule         TEXT NOT NULL,
    rule_hash    TEXT NOT NULL,
    case_id      TEXT NOT NULL,
    ticket_id    BIGINT,
    field        TEXT NOT NULL,
    old          TEXT,
    new          TEXT,
    reason       TEXT NOT NULL,
    dry_run      BOOLEAN NOT NULL,
    outcome      TEXT NOT NULL CHECK (outcome IN ('planned', 'applied', 'failed', 'skipped', 'unknown')),
    error        TEXT,
    http_status  BIGINT,
    planned_seq  BIGINT REFERENCES events(seq),
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL,
    tenant       TEXT,
    instance     TEXT,
    epoch        BIGINT
);

CREATE INDEX events_case ON events (case_id, field);
CREATE INDEX events_rule ON events (rule);
CREATE INDEX events_recorded ON events (recorded_at);
CREATE INDEX events_run ON events (run_id);
CREATE INDEX events_planned ON events (planned_seq);
CREATE INDEX events_tenant ON events (tenant);
CREATE INDEX events_instance ON events (instance);
CREATE INDEX events_hash ON events (hash);

-- One writer (on replicas: the leader): who holds the lease, its epoch and when it ends.
CREATE TABLE lease (
    id           BIGINT PRIMARY KEY CHECK (id = 1),
    holder       TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    host         TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    released     BOOLEAN NOT NULL,
    epoch        BIGINT NOT NULL
);

-- The server's users as last seen: only to show an email beside a user id. Not chained.
CREATE TABLE users (
    id      TEXT PRIMARY KEY,
    email   TEXT NOT NULL,
    seen_at TEXT NOT NULL
);

CREATE FUNCTION casewarden_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % cannot be %', TG_TABLE_NAME,
        CASE TG_OP WHEN 'UPDATE' THEN 'updated' WHEN 'DELETE' THEN 'deleted' ELSE 'truncated' END;
END
$$;

CREATE FUNCTION casewarden_sealed_pass() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: a finished pass cannot be changed';
END
$$;

CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION casewarden_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION casewarden_append_only();
CREATE TRIGGER passes_sealed BEFORE UPDATE ON passes
    FOR EACH ROW WHEN (OLD.hash IS NOT NULL) EXECUTE FUNCTION casewarden_sealed_pass();
CREATE TRIGGER passes_no_delete BEFORE DELETE ON passes
    FOR EACH ROW EXECUTE FUNCTION casewarden_append_only();
CREATE TRIGGER passes_no_truncate BEFORE TRUNCATE ON passes
    FOR EACH STATEMENT EXECUTE FUNCTION casewarden_append_only();
