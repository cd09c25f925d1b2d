-- Deletion, retention expiry and file-system release.

ALTER TABLE file_systems ADD COLUMN released_at timestamptz;

-- Why a snapshot was deleted: 'user' (DeleteSnapshot), 'retention' (its
-- expiry passed) or 'release' (its file system was released).
ALTER TABLE snapshots ADD COLUMN deletion_reason text
    CHECK (deletion_reason IN ('user', 'retention', 'release'));
-- Set by the worker once the driver removed the snapshot's data.
ALTER TABLE snapshots ADD COLUMN data_removed_at timestamptz;
ALTER TABLE snapshots ADD CONSTRAINT snapshots_deletion_consistent
    CHECK ((deleted_at IS NULL) = (deletion_reason IS NULL));

-- The sweeper's due set: its cost follows the number of due snapshots,
-- not the size of the table.
CREATE INDEX snapshots_expiry ON snapshots (expires_at)
    WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
