-- The server (config instance name) a pass ran on; NULL for passes recorded before.
-- Part of the sealed row's hash when set.
ALTER TABLE passes ADD COLUMN instance TEXT;
