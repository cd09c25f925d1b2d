-- File systems, snapshots, client tokens and the outbox.

CREATE TABLE file_systems (
    file_system_id   text PRIMARY KEY,
    file_system_type text NOT NULL CHECK (file_system_type IN ('extreme', 'standard', 'cpfs')),
    status           text NOT NULL CHECK (status IN ('Pending', 'Running', 'Stopped', 'Extending', 'Stopping', 'Deleting')),
    capacity_gib     bigint NOT NULL CHECK (capacity_gib >= 1),
    expired_time     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE snapshots (
    snapshot_id             text PRIMARY KEY,
    file_system_id          text NOT NULL REFERENCES file_systems (file_system_id),
    snapshot_name           text NOT NULL DEFAULT '',
    description             text NOT NULL DEFAULT '',
    snapshot_type           text NOT NULL DEFAULT 'user' CHECK (snapshot_type IN ('user', 'auto')),
    status                  text NOT NULL CHECK (status IN ('progressing', 'accomplished', 'failed')),
    progress                integer NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    remain_time             integer NOT NULL DEFAULT 0 CHECK (remain_time >= 0),
    retention_days          integer NOT NULL CHECK (retention_days = -1 OR retention_days BETWEEN 1 AND 65536),
    -- Fixed at creation: created_at plus retention_days whole days, NULL for -1.
    expires_at              timestamptz,
    source_file_system_size bigint NOT NULL,
    size_bytes              bigint NOT NULL DEFAULT 0,
    status_reason           text NOT NULL DEFAULT '',
    created_at              timestamptz NOT NULL DEFAULT now(),
    completed_at            timestamptz,
    -- Set when the snapshot is deleted; the row stays until its data is gone.
    deleted_at              timestamptz,
    -- The worker that is creating the snapshot, and until when its claim holds.
    lease_owner             text,
    lease_expires_at        timestamptz,
    attempts                integer NOT NULL DEFAULT 0,
    CHECK ((status = 'progressing') = (completed_at IS NULL))
);

-- At most one snapshot in creation per file system, whatever code path
-- writes the row: the admission lock is the first guard, this is the last.
CREATE UNIQUE INDEX snapshots_one_progressing_per_file_system
    ON snapshots (file_system_id)
    WHERE status = 'progressing' AND deleted_at IS NULL;

-- DescribeSnapshots by file system, newest first; also the quota count.
CREATE INDEX snapshots_by_file_system
    ON snapshots (file_system_id, created_at DESC, snapshot_id DESC)
    WHERE deleted_at IS NULL;

-- DescribeSnapshots without a file system filter, newest first.
CREATE INDEX snapshots_by_creation
    ON snapshots (created_at DESC, snapshot_id DESC)
    WHERE deleted_at IS NULL;

-- Client tokens live apart from snapshots so that a replay returns the
-- first snapshot id whatever became of that snapshot.
CREATE TABLE client_tokens (
    file_system_id text NOT NULL REFERENCES file_systems (file_system_id),
    client_token   text NOT NULL,
    snapshot_id    text NOT NULL,
    -- The parameters of the first call; a replay must repeat them.
    fingerprint    text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (file_system_id, client_token)
);

-- Messages for RabbitMQ, written in the same transaction as the change
-- they announce; the relay publishes them and deletes each confirmed row.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    routing_key     text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text
);

CREATE INDEX outbox_due ON outbox (next_attempt_at, id);
