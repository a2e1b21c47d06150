-- The server's users as the last pass that listed them saw them: only to show an email
-- beside the user id an audit row holds. Not evidence (the rows are); not chained.
CREATE TABLE users (
    id      TEXT PRIMARY KEY,
    email   TEXT NOT NULL,
    seen_at TEXT NOT NULL
);
