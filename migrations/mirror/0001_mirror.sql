-- casewarden's local copy of each server's cases (a cache: deleting this file only costs
-- one full listing). One row per case: its id, the server's modified_at, the full listing
-- that last saw it, and the case's JSON as listed, without the fields no rule reads.
CREATE TABLE mirror_cases (
    instance    TEXT NOT NULL,
    id          TEXT NOT NULL,
    modified_at INTEGER NOT NULL,
    generation  INTEGER NOT NULL,
    body        TEXT NOT NULL,
    UNIQUE (instance, id)
);

-- Where each server's sync stands: the filters its full listing used (`scope`), the
-- newest modified_at merged (delta listings start `list_overlap_secs` before it), and
-- when the last full listing ended (epoch ms, this machine's clock).
CREATE TABLE mirror_sync (
    instance      TEXT PRIMARY KEY,
    scope         TEXT NOT NULL,
    generation    INTEGER NOT NULL,
    checkpoint_ms INTEGER,
    last_full_ms  INTEGER
);
