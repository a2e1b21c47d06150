-- The lease epoch of the process that wrote a row (see the lease table); NULL for rows
-- written without the lease or before epochs were recorded. Part of a row's hash when set.
ALTER TABLE events ADD COLUMN epoch INTEGER;
