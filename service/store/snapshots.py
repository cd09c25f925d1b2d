"""SQL for the snapshots table.

State changes made by workers are compare-and-set updates: they name the
state they expect (`status = 'progressing'`, the lease owner, not
deleted), so a redelivered message or a worker that lost its lease
changes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime

import asyncpg

from service.store.database import Database

__all__ = [
    "SnapshotFilter",
    "SnapshotRecord",
    "admit",
    "claim",
    "complete",
    "delete_due",
    "delete_for_release",
    "describe",
    "fail",
    "get",
    "get_for_update",
    "get_many",
    "live_accomplished",
    "mark_data_missing",
    "heartbeat",
    "mark_data_removed",
    "mark_deleted",
    "oldest_overdue",
    "redrive",
    "release_lease",
    "stale_creations",
]

_COLUMNS = """
    snapshot_id, file_system_id, account, snapshot_name, description, snapshot_type, status, progress,
    remain_time, retention_days, expires_at, source_file_system_size, size_bytes, status_reason,
    created_at, completed_at, deleted_at, deletion_reason, data_removed_at, lease_owner,
    lease_expires_at, attempts, last_error, redriven_at
"""


@dataclasses.dataclass(frozen=True)
class SnapshotRecord:
    snapshot_id: str
    file_system_id: str
    # The account that owns the snapshot's file system, copied at creation.
    account: str
    snapshot_name: str
    description: str
    snapshot_type: str
    status: str
    progress: int
    remain_time: int
    retention_days: int
    expires_at: datetime.datetime | None
    source_file_system_size: int
    size_bytes: int
    status_reason: str
    created_at: datetime.datetime
    completed_at: datetime.datetime | None
    deleted_at: datetime.datetime | None
    # "user", "retention" or "release" once deleted.
    deletion_reason: str | None
    data_removed_at: datetime.datetime | None
    lease_owner: str | None
    lease_expires_at: datetime.datetime | None
    # Claims by a worker so far.
    attempts: int
    last_error: str | None
    redriven_at: datetime.datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> SnapshotRecord:
        return cls(**dict(row))


@dataclasses.dataclass(frozen=True)
class SnapshotFilter:
    account: str
    file_system_id: str | None = None
    snapshot_ids: list[str] | None = None
    snapshot_name: str | None = None
    snapshot_type: str | None = None
    status: str | None = None


async def admit(
    database: Database,
    *,
    file_system_id: str,
    account: str,
    client_token: str | None,
    fingerprint: str,
    snapshot_id: str,
    snapshot_name: str,
    description: str,
    retention_days: int,
    snapshot_limit: int,
    throttle_limit: int,
    throttle_window: int,
) -> tuple[str, str | None, str | None]:
    """Run the admission function; return its outcome, the snapshot id and a detail.

    The function commits on its own (a single statement outside any
    transaction block), so admission costs one round trip.
    """
    row = await database.fetchrow(
        "SELECT outcome, snapshot_id, detail FROM nas_admit_snapshot($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        file_system_id,
        account,
        client_token,
        fingerprint,
        snapshot_id,
        snapshot_name,
        description,
        retention_days,
        snapshot_limit,
        throttle_limit,
        throttle_window,
    )
    return row["outcome"], row["snapshot_id"], row["detail"]


async def get(connection: asyncpg.Connection, snapshot_id: str) -> SnapshotRecord | None:
    row = await connection.fetchrow(f"SELECT {_COLUMNS} FROM snapshots WHERE snapshot_id = $1", snapshot_id)
    return SnapshotRecord.from_row(row) if row else None


async def describe(
    connection: asyncpg.Connection, where: SnapshotFilter, limit: int, offset: int
) -> tuple[int, list[SnapshotRecord]]:
    """Return the number of matching snapshots and one page of them, newest first.

    Run it in a repeatable-read transaction so that the count and the page
    come from the same snapshot of the data.
    """
    conditions = ["deleted_at IS NULL"]
    arguments: list[object] = []

    def add(condition: str, value: object) -> None:
        arguments.append(value)
        conditions.append(condition.format(f"${len(arguments)}"))

    add("account = {}", where.account)
    if where.file_system_id is not None:
        add("file_system_id = {}", where.file_system_id)
    if where.snapshot_ids is not None:
        add("snapshot_id = ANY({}::text[])", where.snapshot_ids)
    if where.snapshot_name is not None:
        add("snapshot_name = {}", where.snapshot_name)
    if where.snapshot_type is not None:
        add("snapshot_type = {}", where.snapshot_type)
    if where.status is not None:
        add("status = {}", where.status)

    predicate = " AND ".join(conditions)
    total = await connection.fetchval(f"SELECT count(*) FROM snapshots WHERE {predicate}", *arguments)
    rows = await connection.fetch(
        f"""
        SELECT {_COLUMNS} FROM snapshots WHERE {predicate}
        ORDER BY created_at DESC, snapshot_id DESC
        LIMIT ${len(arguments) + 1} OFFSET ${len(arguments) + 2}
        """,
        *arguments,
        limit,
        offset,
    )
    return total, [SnapshotRecord.from_row(row) for row in rows]


async def claim(
    connection: asyncpg.Connection, snapshot_id: str, owner: str, lease_seconds: float
) -> SnapshotRecord | None:
    """Take or renew the creation lease; return None if the snapshot is not claimable.

    A snapshot is claimable while it is progressing, not deleted, and its
    lease is free, expired or already the caller's.
    """
    row = await connection.fetchrow(
        f"""
        UPDATE snapshots
        SET lease_owner = $2,
            lease_expires_at = now() + make_interval(secs => $3),
            attempts = attempts + CASE WHEN lease_owner IS DISTINCT FROM $2 THEN 1 ELSE 0 END
        WHERE snapshot_id = $1
          AND status = 'progressing'
          AND deleted_at IS NULL
          AND (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_at < now())
        RETURNING {_COLUMNS}
        """,
        snapshot_id,
        owner,
        lease_seconds,
    )
    return SnapshotRecord.from_row(row) if row else None


async def heartbeat(
    connection: asyncpg.Connection,
    snapshot_id: str,
    owner: str,
    lease_seconds: float,
    progress: int,
    remain_time: int,
) -> bool:
    """Extend the lease and store progress; return False if the caller lost the snapshot.

    The snapshot is lost when another worker took the lease over, or when
    it stopped being a live progressing snapshot.
    """
    result = await connection.execute(
        """
        UPDATE snapshots
        SET lease_expires_at = now() + make_interval(secs => $3), progress = $4, remain_time = $5
        WHERE snapshot_id = $1 AND lease_owner = $2 AND status = 'progressing' AND deleted_at IS NULL
        """,
        snapshot_id,
        owner,
        lease_seconds,
        progress,
        remain_time,
    )
    return result == "UPDATE 1"


async def complete(connection: asyncpg.Connection, snapshot_id: str, owner: str, size_bytes: int) -> bool:
    """Mark the snapshot accomplished; return False if the caller lost it meanwhile."""
    result = await connection.execute(
        """
        UPDATE snapshots
        SET status = 'accomplished', progress = 100, remain_time = 0, size_bytes = $3,
            completed_at = now(), lease_owner = NULL, lease_expires_at = NULL
        WHERE snapshot_id = $1 AND lease_owner = $2 AND status = 'progressing' AND deleted_at IS NULL
        """,
        snapshot_id,
        owner,
        size_bytes,
    )
    return result == "UPDATE 1"


async def fail(connection: asyncpg.Connection, snapshot_id: str, owner: str | None, reason: str) -> bool:
    """Mark the snapshot failed with a reason shown to callers.

    With owner None the lease is ignored, for failures decided without one.
    """
    result = await connection.execute(
        """
        UPDATE snapshots
        SET status = 'failed', remain_time = 0, status_reason = $3,
            completed_at = now(), lease_owner = NULL, lease_expires_at = NULL
        WHERE snapshot_id = $1 AND ($2::text IS NULL OR lease_owner = $2)
          AND status = 'progressing' AND deleted_at IS NULL
        """,
        snapshot_id,
        owner,
        reason,
    )
    return result == "UPDATE 1"


async def get_for_update(connection: asyncpg.Connection, snapshot_id: str) -> SnapshotRecord | None:
    row = await connection.fetchrow(
        f"SELECT {_COLUMNS} FROM snapshots WHERE snapshot_id = $1 FOR UPDATE", snapshot_id
    )
    return SnapshotRecord.from_row(row) if row else None


async def mark_deleted(connection: asyncpg.Connection, snapshot_id: str, reason: str) -> bool:
    """Delete a live snapshot; return False if it was already deleted.

    The lease is dropped too, so the worker creating it fails its next
    heartbeat and stops.
    """
    result = await connection.execute(
        """
        UPDATE snapshots
        SET deleted_at = now(), deletion_reason = $2, remain_time = 0, lease_owner = NULL, lease_expires_at = NULL
        WHERE snapshot_id = $1 AND deleted_at IS NULL
        """,
        snapshot_id,
        reason,
    )
    return result == "UPDATE 1"


async def delete_due(
    connection: asyncpg.Connection, now: datetime.datetime | None, limit: int
) -> list[tuple[str, str]]:
    """Delete up to `limit` snapshots whose expiry is at or before `now`, the oldest expiry first.

    Rows that another transaction has locked are skipped, so concurrent sweeps
    never pick the same snapshot. `now` None means the database clock.
    Returns (snapshot id, file system id) pairs.
    """
    rows = await connection.fetch(
        """
        WITH due AS (
            SELECT snapshot_id FROM snapshots
            WHERE deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= coalesce($1, now())
            ORDER BY expires_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        UPDATE snapshots
        SET deleted_at = now(), deletion_reason = 'retention', remain_time = 0,
            lease_owner = NULL, lease_expires_at = NULL
        FROM due
        WHERE snapshots.snapshot_id = due.snapshot_id
        RETURNING snapshots.snapshot_id, snapshots.file_system_id
        """,
        now,
        limit,
    )
    return [(row["snapshot_id"], row["file_system_id"]) for row in rows]


async def oldest_overdue(connection: asyncpg.Connection, now: datetime.datetime | None) -> datetime.timedelta | None:
    """Return how long ago the oldest live snapshot expired, or None if none is due."""
    return await connection.fetchval(
        """
        SELECT coalesce($1, now()) - min(expires_at) FROM snapshots
        WHERE deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= coalesce($1, now())
        """,
        now,
    )


async def delete_for_release(connection: asyncpg.Connection, file_system_id: str) -> list[str]:
    """Delete the snapshots a release takes with it, and return their ids.

    These are the snapshot still in creation and every snapshot whose
    creation overlapped the file system's expired time: created by then
    and not finished by then. Call it holding the file system's lock.
    """
    rows = await connection.fetch(
        """
        UPDATE snapshots
        SET deleted_at = now(), deletion_reason = 'release', remain_time = 0,
            lease_owner = NULL, lease_expires_at = NULL
        FROM file_systems
        WHERE snapshots.file_system_id = $1
          AND file_systems.file_system_id = snapshots.file_system_id
          AND snapshots.deleted_at IS NULL
          AND (
              snapshots.status = 'progressing'
              OR (
                  file_systems.expired_time IS NOT NULL
                  AND snapshots.created_at <= file_systems.expired_time
                  AND snapshots.completed_at > file_systems.expired_time
              )
          )
        RETURNING snapshots.snapshot_id
        """,
        file_system_id,
    )
    return [row["snapshot_id"] for row in rows]


async def mark_data_removed(connection: asyncpg.Connection, snapshot_id: str) -> None:
    await connection.execute(
        "UPDATE snapshots SET data_removed_at = now() WHERE snapshot_id = $1 AND deleted_at IS NOT NULL",
        snapshot_id,
    )


async def release_lease(connection: asyncpg.Connection, snapshot_id: str, owner: str, last_error: str) -> bool:
    """Give up the caller's lease so the next attempt can claim at once, recording why."""
    result = await connection.execute(
        """
        UPDATE snapshots SET lease_owner = NULL, lease_expires_at = NULL, last_error = $3
        WHERE snapshot_id = $1 AND lease_owner = $2 AND status = 'progressing'
        """,
        snapshot_id,
        owner,
        last_error,
    )
    return result == "UPDATE 1"


async def stale_creations(
    connection: asyncpg.Connection, unclaimed_grace_seconds: float, limit: int
) -> list[SnapshotRecord]:
    """Lock creations that have no live owner, skipping rows other reapers hold.

    These are creations whose lease expired (their worker died or stalled),
    and creations nobody claimed for `unclaimed_grace_seconds` although no
    creation message waits in the outbox (their message was lost). Call it
    in a transaction: the rows stay locked until it ends.
    """
    rows = await connection.fetch(
        f"""
        SELECT {_COLUMNS} FROM snapshots
        WHERE status = 'progressing' AND deleted_at IS NULL
          AND (
              lease_expires_at < now()
              OR (
                  lease_owner IS NULL
                  AND coalesce(redriven_at, created_at) < now() - make_interval(secs => $1)
                  AND NOT EXISTS (
                      SELECT 1 FROM outbox
                      WHERE outbox.payload ->> 'snapshot_id' = snapshots.snapshot_id
                        AND outbox.routing_key = 'snapshot.create'
                  )
              )
          )
        ORDER BY created_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
        """,
        unclaimed_grace_seconds,
        limit,
    )
    return [SnapshotRecord.from_row(row) for row in rows]


async def redrive(connection: asyncpg.Connection, snapshot_id: str) -> None:
    """Clear the lease of a progressing snapshot and note the time, before a new creation message."""
    await connection.execute(
        """
        UPDATE snapshots SET lease_owner = NULL, lease_expires_at = NULL, redriven_at = now()
        WHERE snapshot_id = $1 AND status = 'progressing' AND deleted_at IS NULL
        """,
        snapshot_id,
    )


async def get_many(connection: asyncpg.Connection, snapshot_ids: list[str]) -> dict[str, SnapshotRecord]:
    rows = await connection.fetch(f"SELECT {_COLUMNS} FROM snapshots WHERE snapshot_id = ANY($1::text[])", snapshot_ids)
    return {row["snapshot_id"]: SnapshotRecord.from_row(row) for row in rows}


async def live_accomplished(connection: asyncpg.Connection) -> list[tuple[str, str]]:
    """Return (snapshot id, file system id) of every accomplished snapshot that is not deleted."""
    rows = await connection.fetch(
        "SELECT snapshot_id, file_system_id FROM snapshots WHERE status = 'accomplished' AND deleted_at IS NULL"
    )
    return [(row["snapshot_id"], row["file_system_id"]) for row in rows]


async def mark_data_missing(connection: asyncpg.Connection, snapshot_id: str, reason: str) -> bool:
    """Mark an accomplished snapshot failed because its data is gone; False if it changed meanwhile."""
    result = await connection.execute(
        """
        UPDATE snapshots SET status = 'failed', status_reason = $2
        WHERE snapshot_id = $1 AND status = 'accomplished' AND deleted_at IS NULL
        """,
        snapshot_id,
        reason,
    )
    return result == "UPDATE 1"
