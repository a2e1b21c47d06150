-- A finished pass row is sealed: its hash covers every field and the events chain head at
-- the time it finished, and `audit verify` recomputes it.
ALTER TABLE passes ADD COLUMN chain_head TEXT;
ALTER TABLE passes ADD COLUMN hash TEXT;

-- `INSERT OR REPLACE` deletes the old row without firing DELETE triggers: refuse an
-- insert that would replace anything.
CREATE TRIGGER events_no_replace BEFORE INSERT ON events
WHEN EXISTS (SELECT 1 FROM events WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: events cannot be replaced');
END;

CREATE TRIGGER passes_no_replace BEFORE INSERT ON passes
WHEN EXISTS (SELECT 1 FROM passes WHERE id = NEW.id)
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: passes cannot be replaced');
END;

CREATE TRIGGER passes_sealed BEFORE UPDATE ON passes
WHEN OLD.hash IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: a finished pass cannot be changed');
END;

CREATE TRIGGER passes_no_delete BEFORE DELETE ON passes
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: passes cannot be deleted');
END;
