-- The cases move from a row each to segments: the cases of one merged page as records
-- (kind, generation, modified_at, id, JSON without the fields no rule reads), compressed
-- as one LZ4 block. Replayed in `seq` order, a newer modified_at winning. The old rows are
-- dropped with the checkpoints, so the next pass lists every case once.
DROP TABLE mirror_cases;
DELETE FROM mirror_sync;

CREATE TABLE mirror_segments (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    instance   TEXT NOT NULL,
    -- The full listing under way or last ended when it was written; a full listing that
    -- ends deletes the segments before its own.
    generation INTEGER NOT NULL,
    cases      BLOB NOT NULL
);
CREATE INDEX mirror_segments_instance ON mirror_segments (instance, generation);
