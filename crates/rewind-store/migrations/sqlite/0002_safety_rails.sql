-- Safety rails: staged waves, target locks, and a restore point that never changes.

-- Cumulative target counts at the end of each wave ("2,60"); '' for a run without waves.
ALTER TABLE runs ADD COLUMN waves TEXT NOT NULL DEFAULT '';
-- A wave whose share of failed targets exceeds this halts the run.
ALTER TABLE runs ADD COLUMN halt_rate REAL NOT NULL DEFAULT 0.05;
-- The last open wave (1-based).
ALTER TABLE runs ADD COLUMN wave INTEGER NOT NULL DEFAULT 1;

-- A live (running or halted) real run holds its targets: another run of the same target is
-- refused. The primary key makes the lock atomic between concurrent creators.
CREATE TABLE target_locks (
    target  TEXT PRIMARY KEY,
    run_id  TEXT NOT NULL REFERENCES runs (id)
);
CREATE INDEX target_locks_run ON target_locks (run_id);

CREATE TRIGGER runs_restore_point_fixed BEFORE UPDATE OF restore_point ON runs
WHEN NEW.restore_point IS NOT OLD.restore_point
BEGIN
    SELECT RAISE(ABORT, 'a run''s restore point never changes');
END;
