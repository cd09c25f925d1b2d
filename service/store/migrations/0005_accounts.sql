-- Accounts own file systems; callers see only their account's resources.

ALTER TABLE file_systems ADD COLUMN account text NOT NULL DEFAULT 'default';
ALTER TABLE snapshots ADD COLUMN account text NOT NULL DEFAULT 'default';

-- DescribeSnapshots without a file system filter, within one account.
CREATE INDEX snapshots_by_account
    ON snapshots (account, created_at DESC, snapshot_id DESC)
    WHERE deleted_at IS NULL;

-- Bearer tokens. Only a SHA-256 hash of each token's secret is stored.
CREATE TABLE api_tokens (
    token_id    text PRIMARY KEY,
    secret_hash bytea NOT NULL,
    account     text NOT NULL,
    role        text NOT NULL CHECK (role IN ('user', 'admin')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- CreateSnapshot calls per account and fixed one-minute window, shared by
-- every API replica.
CREATE TABLE request_counts (
    account      text NOT NULL,
    window_start timestamptz NOT NULL,
    calls        integer NOT NULL,
    PRIMARY KEY (account, window_start)
);
