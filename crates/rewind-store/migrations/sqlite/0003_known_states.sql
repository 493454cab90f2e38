-- States by name, as the model declares them (rewind_model::lifecycle): the store refuses any
-- other text, so an unknown state is an error where it is written, never a silent default.
--
-- Instances and attempts are rebuilt with CHECK constraints (nothing references them). Runs
-- (referenced by every other table) and events (append-only and the largest table; new kinds
-- come with new features) get triggers instead, which a later migration replaces cheaply.

CREATE TABLE instances_checked (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    idx         INTEGER NOT NULL,
    key         TEXT NOT NULL,
    step        TEXT NOT NULL,
    target      TEXT,
    grp         TEXT,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'blocked', 'skipped', 'cancelled')),
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
    outcome     TEXT CHECK (outcome IS NULL OR outcome IN ('succeeded', 'failed', 'cancelled', 'interrupted')),
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

-- Runs and events already stored must hold known names: a CHECK on a scratch copy of them
-- fails the migration otherwise (RAISE works only inside triggers).
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

CREATE TEMP TABLE rw_known_event_kinds (kind TEXT CHECK (kind IN (
    'run.created',
    'run.started',
    'run.resumed',
    'run.interrupting',
    'run.interrupted',
    'run.halting',
    'run.halted',
    'run.cancelling',
    'run.finished',
    'wave.passed',
    'wave.opened',
    'instance.started',
    'instance.succeeded',
    'instance.retry_scheduled',
    'instance.failed',
    'instance.blocked',
    'instance.cancelled',
    'instance.interrupted',
    'instance.orphan_stopped',
    'operator.resume',
    'operator.retry',
    'operator.cancel')));
INSERT INTO rw_known_event_kinds SELECT DISTINCT kind FROM events;
DROP TABLE rw_known_event_kinds;
CREATE TRIGGER events_kind_known BEFORE INSERT ON events
WHEN NEW.kind NOT IN (
    'run.created',
    'run.started',
    'run.resumed',
    'run.interrupting',
    'run.interrupted',
    'run.halting',
    'run.halted',
    'run.cancelling',
    'run.finished',
    'wave.passed',
    'wave.opened',
    'instance.started',
    'instance.succeeded',
    'instance.retry_scheduled',
    'instance.failed',
    'instance.blocked',
    'instance.cancelled',
    'instance.interrupted',
    'instance.orphan_stopped',
    'operator.resume',
    'operator.retry',
    'operator.cancel')
BEGIN
    SELECT RAISE(ABORT, 'unknown event kind');
END;
