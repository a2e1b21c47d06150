-- The text of every rule file a pass ran, once per distinct text (its SHA-256 is the
-- `rule_hash` of the chained rows it caused, so the text is checked against the chain),
-- and which text of each rule every pass ran. Append-only like the rest of the log.
CREATE TABLE rule_texts (
    hash        TEXT PRIMARY KEY,
    rule        TEXT NOT NULL,
    file        TEXT NOT NULL,
    text        TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);

CREATE TABLE pass_rules (
    pass_id TEXT NOT NULL,
    rule    TEXT NOT NULL,
    hash    TEXT NOT NULL,
    PRIMARY KEY (pass_id, rule)
);

CREATE TRIGGER rule_texts_no_update BEFORE UPDATE ON rule_texts
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: rule texts cannot be changed');
END;

CREATE TRIGGER rule_texts_no_delete BEFORE DELETE ON rule_texts
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: rule texts cannot be deleted');
END;

CREATE TRIGGER pass_rules_no_update BEFORE UPDATE ON pass_rules
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: pass rules cannot be changed');
END;

CREATE TRIGGER pass_rules_no_delete BEFORE DELETE ON pass_rules
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: pass rules cannot be deleted');
END;
