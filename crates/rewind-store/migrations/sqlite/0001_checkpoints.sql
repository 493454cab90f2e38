-- rewind checkpoint store (SQLite). Offsets (`*_s`) are seconds since the run started; virtual
-- seconds for simulated runs. Instances and attempts are clustered on their keys (WITHOUT ROWID):
-- an update writes one B-tree, not a table and an index.

CREATE TABLE runs (
    id                TEXT PRIMARY KEY,
    workflow          TEXT NOT NULL,
    workflow_file     TEXT NOT NULL,
    workflow_text     TEXT NOT NULL,
    targets_file      TEXT NOT NULL,
    targets_text      TEXT NOT NULL,
    workdir           TEXT NOT NULL,
    cwd               TEXT NOT NULL,
    restore_point     TEXT NOT NULL,
    fingerprint       TEXT NOT NULL,
    simulated         INTEGER NOT NULL,
    seed              INTEGER NOT NULL,
    fail_rate         REAL NOT NULL,
    max_running       INTEGER,
    priority          TEXT NOT NULL,
    instances         INTEGER NOT NULL,
    targets           INTEGER NOT NULL,
    lower_bound_s     REAL NOT NULL,
    state             TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    started_unix_ms   INTEGER NOT NULL,
    clock_s           REAL NOT NULL DEFAULT 0,
    finished_s        REAL,
    reason            TEXT,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    owner             TEXT,
    heartbeat_unix_ms INTEGER
);

CREATE TABLE instances (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    idx         INTEGER NOT NULL,
    key         TEXT NOT NULL,
    step        TEXT NOT NULL,
    target      TEXT,
    grp         TEXT,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    failures    INTEGER NOT NULL DEFAULT 0,
    retry_at_s  REAL,
    finished_s  REAL,
    output      TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;

CREATE TABLE attempts (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    idx         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    started_s   REAL NOT NULL,
    ended_s     REAL,
    outcome     TEXT,
    exit_code   INTEGER,
    error       TEXT,
    stdout_tail TEXT,
    stderr_tail TEXT,
    PRIMARY KEY (run_id, idx, attempt)
) WITHOUT ROWID;

-- Append-only: every state change and every operator action.
CREATE TABLE events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL REFERENCES runs (id),
    at_s    REAL NOT NULL,
    wall    TEXT NOT NULL,
    kind    TEXT NOT NULL,
    key     TEXT,
    detail  TEXT
);
CREATE INDEX events_run ON events (run_id, seq);
