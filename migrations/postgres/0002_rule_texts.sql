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

CREATE TRIGGER rule_texts_no_change BEFORE UPDATE OR DELETE ON rule_texts
    FOR EACH ROW EXECUTE FUNCTION casewarden_append_only();
CREATE TRIGGER rule_texts_no_truncate BEFORE TRUNCATE ON rule_texts
    FOR EACH STATEMENT EXECUTE FUNCTION casewarden_append_only();
CREATE TRIGGER pass_rules_no_change BEFORE UPDATE OR DELETE ON pass_rules
    FOR EACH ROW EXECUTE FUNCTION casewarden_append_only();
CREATE TRIGGER pass_rules_no_truncate BEFORE TRUNCATE ON pass_rules
    FOR EACH STATEMENT EXECUTE FUNCTION casewarden_append_only();
