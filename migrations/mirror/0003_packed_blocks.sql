-- Segments keep the cases' texts as the blocks the mirror holds in memory (format 2: the
-- records, then the blocks, each packed once). Segments of format 1 are dropped with the
-- checkpoints, so the next pass lists every case once.
DELETE FROM mirror_segments;
DELETE FROM mirror_sync;
