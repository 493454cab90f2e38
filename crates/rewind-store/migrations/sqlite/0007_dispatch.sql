-- Dispatch to workers (issue 17): the protocol of crates/rewind-dispatch, whose model is the
-- specification of every statement on these tables.

-- A coordinator's hold on a run is fenced by an epoch: every take-over bumps it, and every
-- dispatch write of a coordinator checks it. 0 for runs nobody took since this migration.
ALTER TABLE run_leases ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;

-- One row per dispatched attempt. `epoch` is bumped by every claim, hand-back and rescue; an
-- outcome is accepted only from the holder (`worker`, `incarnation`) at the epoch of its claim.
CREATE TABLE dispatch (
    run_id           TEXT NOT NULL REFERENCES runs (id),
    idx              INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    queue            TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('queued', 'claimed', 'done', 'lost')),
    epoch            INTEGER NOT NULL DEFAULT 0,
    worker           TEXT,
    incarnation      INTEGER,
    lease_until_ms   INTEGER,
    enqueued_unix_ms INTEGER NOT NULL,
    payload          TEXT NOT NULL,
    outcome          TEXT,
    PRIMARY KEY (run_id, idx, attempt),
    CHECK (state <> 'claimed'
           OR (worker IS NOT NULL AND incarnation IS NOT NULL AND lease_until_ms IS NOT NULL)),
    CHECK ((state = 'done') = (outcome IS NOT NULL))
);
-- What claims read (oldest first per queue), what the rescuer reads, what heartbeats update.
CREATE INDEX dispatch_queued ON dispatch (queue, enqueued_unix_ms, run_id, idx, attempt)
    WHERE state = 'queued';
CREATE INDEX dispatch_leases ON dispatch (lease_until_ms) WHERE state = 'claimed';
CREATE INDEX dispatch_holders ON dispatch (worker, incarnation) WHERE state = 'claimed';

-- Worker processes. A name is reused across restarts; each registration is its next
-- incarnation, and only the current one may claim, heartbeat or report. `queues`: one per line.
CREATE TABLE workers (
    name              TEXT PRIMARY KEY,
    incarnation       INTEGER NOT NULL,
    host              TEXT NOT NULL,
    queues            TEXT NOT NULL,
    slots             INTEGER NOT NULL,
    started_unix_ms   INTEGER NOT NULL,
    heartbeat_unix_ms INTEGER NOT NULL,
    stopping          INTEGER NOT NULL DEFAULT 0
);

-- Outcomes that were refused (late, from an old epoch or another incarnation): kept for the
-- record, never applied. No reference to `dispatch`: the attempt may be forgotten already.
CREATE TABLE stale_outcomes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    epoch       INTEGER NOT NULL,
    worker      TEXT NOT NULL,
    incarnation INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    at_unix_ms  INTEGER NOT NULL
);
