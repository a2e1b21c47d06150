-- One writer: the claim a pass holds on the audit store for its whole run. One row; a
-- new holder replaces it, bumping the epoch.
CREATE TABLE lease (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    holder       TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    host         TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    released     INTEGER NOT NULL,
    epoch        INTEGER NOT NULL
);
