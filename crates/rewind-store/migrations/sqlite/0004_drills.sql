-- DR drills: one row per drill that ended (passed, missed its objectives, or failed), written by
-- `rewind drill run`. `result` is the drill's whole record as JSON (targets, objectives, every
-- failure), kept for `rewind drill report`; the columns beside it are what history lists and
-- filters on. `run_id` is the run the drill created (none when it failed before creating one).
CREATE TABLE drills (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    run_id          TEXT,
    started_at      TEXT NOT NULL,
    started_unix_ms INTEGER NOT NULL,
    passed          INTEGER NOT NULL CHECK (passed = 0 OR passed = 1),
    rto_s           REAL,
    rpo_s           REAL,
    result          TEXT NOT NULL
);

CREATE INDEX drills_by_name ON drills (name, started_unix_ms);
