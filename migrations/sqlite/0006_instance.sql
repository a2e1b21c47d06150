-- The server (the config's instance name) a row's case lives on; NULL for rows written
-- before instances were recorded. Part of a row's hash when set.
ALTER TABLE events ADD COLUMN instance TEXT;
CREATE INDEX events_instance ON events (instance);
