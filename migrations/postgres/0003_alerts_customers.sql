-- Which alert each notify target was last sent, so the same event for the same rule and
-- server goes out at most once per `realert` window, across `once` processes and replicas,
-- and a `resolved` follows when the condition clears. Not part of the chained record: a
-- row per (target, event, rule, instance), updated in place.
CREATE TABLE alerts (
    target   TEXT NOT NULL,
    event    TEXT NOT NULL,
    rule     TEXT NOT NULL,
    instance TEXT NOT NULL,
    firing   BOOLEAN NOT NULL,
    sent_at  TEXT NOT NULL,
    PRIMARY KEY (target, event, rule, instance)
);

-- Each server's customers as its `/tenants` last named them (`cust_id` -> `cust_name`), so
-- reports show names beside ids. Updated in place when a pass meets a customer it lacks.
CREATE TABLE customers (
    instance  TEXT NOT NULL,
    cust_id   TEXT NOT NULL,
    cust_name TEXT NOT NULL,
    seen_at   TEXT NOT NULL,
    PRIMARY KEY (instance, cust_id)
);
