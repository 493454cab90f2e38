-- States by name, as the model declares them (rewind_model::lifecycle): the store refuses any
-- other text, so an unknown state is an error where it is written, never a silent default.

ALTER TABLE runs ADD CONSTRAINT runs_state_known CHECK (state IN ('running', 'halted', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE instances ADD CONSTRAINT instances_state_known CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'blocked', 'skipped', 'cancelled'));
ALTER TABLE attempts ADD CONSTRAINT attempts_outcome_known
    CHECK (outcome IS NULL OR outcome IN ('succeeded', 'failed', 'cancelled', 'interrupted'));
ALTER TABLE events ADD CONSTRAINT events_kind_known CHECK (kind IN (
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
    'operator.cancel'));
