-- Why the next pass must list every case whatever the checkpoint says (a damaged case
-- found in the mirror), until a full listing ends; NULL when nothing asks for one.
ALTER TABLE mirror_sync ADD COLUMN relist TEXT;
