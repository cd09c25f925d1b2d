-- CreateSnapshot admission as one function, so that a call costs one round
-- trip to PostgreSQL instead of one per statement and per transaction
-- step. It counts the call for throttling, then runs the checks in the
-- order the API documents, under the file system's row lock. It returns
-- which rule stopped the call, or "admitted", and the API turns that
-- outcome into the error and its message.

CREATE FUNCTION nas_admit_snapshot(
    p_file_system_id text,
    p_account text,
    p_client_token text,
    p_fingerprint text,
    p_snapshot_id text,
    p_snapshot_name text,
    p_description text,
    p_retention_days integer,
    p_snapshot_limit integer,
    p_throttle_limit integer,
    p_throttle_window integer
) RETURNS TABLE (outcome text, snapshot_id text, detail text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    fs file_systems%ROWTYPE;
    earlier client_tokens%ROWTYPE;
    live bigint;
    creating bigint;
    v_window_start timestamptz;
    v_calls integer;
BEGIN
    -- Count the call in the account's throttling window first: a throttled
    -- call still counts, and commits its count.
    v_window_start := to_timestamp(floor(extract(epoch FROM now()) / p_throttle_window) * p_throttle_window);
    INSERT INTO request_counts AS counts (account, window_start, calls)
    VALUES (p_account, v_window_start, 1)
    ON CONFLICT ON CONSTRAINT request_counts_pkey DO UPDATE SET calls = counts.calls + 1
    RETURNING counts.calls INTO v_calls;
    IF v_calls > p_throttle_limit THEN
        RETURN QUERY SELECT 'throttled'::text, NULL::text,
            greatest(1, ceil(extract(epoch FROM v_window_start + make_interval(secs => p_throttle_window) - now())))::text;
        RETURN;
    END IF;

    -- The row lock serialises every admission on this file system.
    SELECT * INTO fs FROM file_systems WHERE file_system_id = p_file_system_id FOR UPDATE;
    IF NOT FOUND OR fs.released_at IS NOT NULL OR fs.account <> p_account THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::text, NULL::text;
        RETURN;
    END IF;

    IF p_client_token IS NOT NULL THEN
        SELECT * INTO earlier FROM client_tokens
        WHERE file_system_id = p_file_system_id AND client_token = p_client_token;
        IF FOUND THEN
            IF earlier.fingerprint = p_fingerprint THEN
                RETURN QUERY SELECT 'replayed'::text, earlier.snapshot_id, NULL::text;
            ELSE
                RETURN QUERY SELECT 'mismatch'::text, earlier.snapshot_id, earlier.fingerprint;
            END IF;
            RETURN;
        END IF;
    END IF;

    IF fs.file_system_type <> 'extreme' THEN
        RETURN QUERY SELECT 'type'::text, NULL::text, fs.file_system_type;
        RETURN;
    END IF;
    IF fs.status <> 'Running' THEN
        RETURN QUERY SELECT 'status'::text, NULL::text, fs.status;
        RETURN;
    END IF;
    IF fs.expired_time IS NOT NULL AND fs.expired_time <= now() THEN
        RETURN QUERY SELECT 'expired'::text, NULL::text, to_char(fs.expired_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"');
        RETURN;
    END IF;

    SELECT count(*), count(*) FILTER (WHERE status = 'progressing')
    INTO live, creating
    FROM snapshots WHERE file_system_id = p_file_system_id AND deleted_at IS NULL;
    IF live >= p_snapshot_limit THEN
        RETURN QUERY SELECT 'quota'::text, NULL::text, NULL::text;
        RETURN;
    END IF;
    IF creating > 0 THEN
        RETURN QUERY SELECT 'creating'::text, NULL::text, NULL::text;
        RETURN;
    END IF;

    -- The snapshot, its client token and its work message, together. The
    -- expiry is fixed here: retention_days periods of 24 hours.
    INSERT INTO snapshots (
        snapshot_id, file_system_id, account, snapshot_name, description, status,
        retention_days, expires_at, source_file_system_size
    ) VALUES (
        p_snapshot_id, p_file_system_id, p_account, p_snapshot_name, p_description, 'progressing',
        p_retention_days,
        CASE WHEN p_retention_days = -1 THEN NULL ELSE now() + make_interval(hours => 24 * p_retention_days) END,
        fs.capacity_gib
    );
    IF p_client_token IS NOT NULL THEN
        INSERT INTO client_tokens (file_system_id, client_token, snapshot_id, fingerprint)
        VALUES (p_file_system_id, p_client_token, p_snapshot_id, p_fingerprint);
    END IF;
    INSERT INTO outbox (routing_key, payload)
    VALUES ('snapshot.create', jsonb_build_object('snapshot_id', p_snapshot_id, 'file_system_id', p_file_system_id));
    NOTIFY nas_outbox;

    RETURN QUERY SELECT 'admitted'::text, p_snapshot_id, NULL::text;
END;
$$;
