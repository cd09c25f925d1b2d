-- Leases, retries and re-driving of snapshot creation.

-- Why the latest creation attempt failed, kept for the final failure reason.
ALTER TABLE snapshots ADD COLUMN last_error text;
-- When the reaper last sent the snapshot back to the workers.
ALTER TABLE snapshots ADD COLUMN redriven_at timestamptz;

-- The reaper's candidates: snapshots in creation, a small set.
CREATE INDEX snapshots_progressing ON snapshots (created_at)
    WHERE status = 'progressing' AND deleted_at IS NULL;

-- Lets the reaper see whether a creation message is still waiting in the outbox.
CREATE INDEX outbox_by_snapshot ON outbox ((payload ->> 'snapshot_id'));
