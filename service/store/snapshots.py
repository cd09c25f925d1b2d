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

__all__ = [
    "SnapshotFilter",
    "SnapshotRecord",
    "Usage",
    "claim",
    "complete",
    "describe",
    "fail",
    "get",
    "heartbeat",
    "insert",
    "usage",
]

_COLUMNS = """
    snapshot_id, file_system_id, snapshot_name, description, snapshot_type, status, progress,
    remain_time, retention_days, expires_at, source_file_system_size, size_bytes, status_reason,
    created_at, completed_at, deleted_at, lease_owner, lease_expires_at, attempts
"""


@dataclasses.dataclass(frozen=True)
class SnapshotRecord:
    snapshot_id: str
    file_system_id: str
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
    lease_owner: str | None
    lease_expires_at: datetime.datetime | None
    attempts: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> SnapshotRecord:
        return cls(**dict(row))


@dataclasses.dataclass(frozen=True)
class Usage:
    # Snapshots not deleted, the one in creation included.
    count: int
    creating: bool


@dataclasses.dataclass(frozen=True)
class SnapshotFilter:
    file_system_id: str | None = None
    snapshot_ids: list[str] | None = None
    snapshot_name: str | None = None
    snapshot_type: str | None = None
    status: str | None = None


async def usage(connection: asyncpg.Connection, file_system_id: str) -> Usage:
    row = await connection.fetchrow(
        """
        SELECT count(*) AS total, count(*) FILTER (WHERE status = 'progressing') AS creating
        FROM snapshots
        WHERE file_system_id = $1 AND deleted_at IS NULL
        """,
        file_system_id,
    )
    return Usage(count=row["total"], creating=row["creating"] > 0)


async def insert(
    connection: asyncpg.Connection,
    *,
    snapshot_id: str,
    file_system_id: str,
    snapshot_name: str,
    description: str,
    retention_days: int,
    source_file_system_size: int,
) -> SnapshotRecord:
    """Insert a snapshot in progressing state.

    Its expiry is fixed here, by the database clock, as the creation time
    plus retention_days periods of 24 hours. Hours rather than days keep a
    daylight-saving change in the session time zone from moving it.
    """
    row = await connection.fetchrow(
        f"""
        INSERT INTO snapshots (
            snapshot_id, file_system_id, snapshot_name, description, status,
            retention_days, expires_at, source_file_system_size
        )
        VALUES (
            $1, $2, $3, $4, 'progressing', $5,
            CASE WHEN $5 = -1 THEN NULL ELSE now() + make_interval(hours => 24 * $5) END,
            $6
        )
        RETURNING {_COLUMNS}
        """,
        snapshot_id,
        file_system_id,
        snapshot_name,
        description,
        retention_days,
        source_file_system_size,
    )
    return SnapshotRecord.from_row(row)


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
