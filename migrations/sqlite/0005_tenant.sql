-- The customer (cust_id) whose case a row is about; NULL for rows written before tenants
-- were recorded and for cases that name none. Part of a row's hash when set.
ALTER TABLE events ADD COLUMN tenant TEXT;
CREATE INDEX events_tenant ON events (tenant);
