-- States by name, as the model declares them (rewind_model::lifecycle): the store refuses any
-- other text, so an unknown state is an error where it is written, never a silent default.
--
-- Instances, attempts and events are rebuilt with CHECK constraints (nothing references them; a
-- CHECK costs next to nothing per row, where a trigger on `events` cost a third of a simulated
-- run's time). The constraints are chains of `=`, not `IN (...)`: SQLite builds a lookup table
-- for an `IN` list each time a CHECK is evaluated, six times the cost of a plain insert. `runs`,
-- which every other table references, gets triggers: its state changes a few times per run, and a
-- rebuild would have to drop the parent of four tables. A new event kind is a migration: rebuild
-- `events` again with the longer list (as here).

CREATE TABLE instances_checked (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    idx         INTEGER NOT NULL,
    key         TEXT NOT NULL,
    step        TEXT NOT NULL,
    target      TEXT,
    grp         TEXT,
    state       TEXT NOT NULL CHECK (state = 'pending'
        OR state = 'running'
        OR state = 'succeeded'
        OR state = 'failed'
        OR state = 'blocked'
        OR state = 'skipped'
        OR state = 'cancelled'),
    attempts    INTEGER NOT NULL DEFAULT 0,
    failures    INTEGER NOT NULL DEFAULT 0,
    retry_at_s  REAL,
    finished_s  REAL,
    output      TEXT,
    error       TEXT,
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
INSERT INTO instances_checked
    SELECT run_id, idx, key, step, target, grp, state, attempts, failures, retry_at_s, finished_s, output, error
    FROM instances;
DROP TABLE instances;
ALTER TABLE instances_checked RENAME TO instances;

CREATE TABLE attempts_checked (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    idx         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    started_s   REAL NOT NULL,
    ended_s     REAL,
    outcome     TEXT CHECK (outcome IS NULL OR (outcome = 'succeeded'
        OR outcome = 'failed'
        OR outcome = 'cancelled'
        OR outcome = 'interrupted')),
    exit_code   INTEGER,
    error       TEXT,
    stdout_tail TEXT,
    stderr_tail TEXT,
    PRIMARY KEY (run_id, idx, attempt)
) WITHOUT ROWID;
INSERT INTO attempts_checked
    SELECT run_id, idx, attempt, started_s, ended_s, outcome, exit_code, error, stdout_tail, stderr_tail
    FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_checked RENAME TO attempts;

-- Runs already stored must hold known states: a CHECK on a scratch copy of them fails the
-- migration otherwise (RAISE works only inside triggers).
CREATE TEMP TABLE rw_known_run_states (state TEXT CHECK (state IN ('running', 'halted', 'succeeded', 'failed', 'cancelled')));
INSERT INTO rw_known_run_states SELECT DISTINCT state FROM runs;
DROP TABLE rw_known_run_states;
CREATE TRIGGER runs_state_known_insert BEFORE INSERT ON runs
WHEN NEW.state NOT IN ('running', 'halted', 'succeeded', 'failed', 'cancelled')
BEGIN
    SELECT RAISE(ABORT, 'unknown run state');
END;
CREATE TRIGGER runs_state_known_update BEFORE UPDATE OF state ON runs
WHEN NEW.state NOT IN ('running', 'halted', 'succeeded', 'failed', 'cancelled')
BEGIN
    SELECT RAISE(ABORT, 'unknown run state');
END;

CREATE TABLE events_checked (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL REFERENCES runs (id),
    at_s    REAL NOT NULL,
    wall    TEXT NOT NULL,
    kind    TEXT NOT NULL CHECK (kind = 'run.created'
        OR kind = 'run.started'
        OR kind = 'run.resumed'
        OR kind = 'run.interrupting'
        OR kind = 'run.interrupted'
        OR kind = 'run.halting'
        OR kind = 'run.halted'
        OR kind = 'run.cancelling'
        OR kind = 'run.finished'
        OR kind = 'wave.passed'
        OR kind = 'wave.opened'
        OR kind = 'instance.started'
        OR kind = 'instance.succeeded'
        OR kind = 'instance.retry_scheduled'
        OR kind = 'instance.failed'
        OR kind = 'instance.blocked'
        OR kind = 'instance.cancelled'
        OR kind = 'instance.interrupted'
        OR kind = 'instance.orphan_stopped'
        OR kind = 'operator.resume'
        OR kind = 'operator.retry'
        OR kind = 'operator.cancel'),
    key     TEXT,
    detail  TEXT
);
INSERT INTO events_checked (seq, run_id, at_s, wall, kind, key, detail)
    SELECT seq, run_id, at_s, wall, kind, key, detail FROM events;
DROP TABLE events;
ALTER TABLE events_checked RENAME TO events;
CREATE INDEX events_run ON events (run_id, seq);
