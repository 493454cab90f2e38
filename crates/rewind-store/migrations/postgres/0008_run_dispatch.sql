-- Where a run's attempts execute (issue 17): `local` (the driving process) or `workers`
-- (`rewind worker` processes, PostgreSQL only). `resume` without `--dispatch` uses it, and
-- `rewind coordinate` takes over only `workers` runs. Runs stored before this: local.
ALTER TABLE runs ADD COLUMN dispatch TEXT NOT NULL DEFAULT 'local'
    CHECK (dispatch IN ('local', 'workers'));
