-- Who started a run (`user@host` of the process that created it), for `status` and the board.
-- NULL for runs created before this migration: nobody recorded it.
ALTER TABLE runs ADD COLUMN started_by TEXT;
