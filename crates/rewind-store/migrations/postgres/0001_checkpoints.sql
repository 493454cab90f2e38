-- rewind checkpoint store (PostgreSQL). Offsets (`*_s`) are seconds since the run started; virtual
-- seconds for simulated runs.

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
    simulated         BIGINT NOT NULL,
    seed              BIGINT NOT NULL,
    fail_rate         DOUBLE PRECISION NOT NULL,
    max_running       BIGINT,
    priority          TEXT NOT NULL,
    instances         BIGINT NOT NULL,
    targets           BIGINT NOT NULL,
    lower_bound_s     DOUBLE PRECISION NOT NULL,
    state             TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    started_unix_ms   BIGINT NOT NULL,
    clock_s           DOUBLE PRECISION NOT NULL DEFAULT 0,
    finished_s        DOUBLE PRECISION,
    reason            TEXT,
    cancel_requested  BIGINT NOT NULL DEFAULT 0,
    owner             TEXT,
    heartbeat_unix_ms BIGINT
);

CREATE TABLE instances (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    idx         BIGINT NOT NULL,
    key         TEXT NOT NULL,
    step        TEXT NOT NULL,
    target      TEXT,
    grp         TEXT,
    state       TEXT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    failures    BIGINT NOT NULL DEFAULT 0,
    retry_at_s  DOUBLE PRECISION,
    finished_s  DOUBLE PRECISION,
    output      TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, idx)
);

CREATE TABLE attempts (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    idx         BIGINT NOT NULL,
    attempt     BIGINT NOT NULL,
    started_s   DOUBLE PRECISION NOT NULL,
    ended_s     DOUBLE PRECISION,
    outcome     TEXT,
    exit_code   BIGINT,
    error       TEXT,
    stdout_tail TEXT,
    stderr_tail TEXT,
    PRIMARY KEY (run_id, idx, attempt)
);

-- Append-only: every state change and every operator action.
CREATE TABLE events (
    seq     BIGSERIAL PRIMARY KEY,
    run_id  TEXT NOT NULL REFERENCES runs (id),
    at_s    DOUBLE PRECISION NOT NULL,
    wall    TEXT NOT NULL,
    kind    TEXT NOT NULL,
    key     TEXT,
    detail  TEXT
);
CREATE INDEX events_run ON events (run_id, seq);
