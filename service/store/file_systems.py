"""SQL for the file_systems table."""

from __future__ import annotations

import dataclasses
import datetime

import asyncpg

__all__ = ["FileSystemRecord", "count", "get", "insert", "list_page", "lock", "mark_provisioned", "release", "update"]

_COLUMNS = """
    file_system_id, account, file_system_type, status, capacity_gib, expired_time, created_at, released_at,
    provisioned_at,
    (expired_time IS NOT NULL AND expired_time <= now()) AS expired
"""


@dataclasses.dataclass(frozen=True)
class FileSystemRecord:
    file_system_id: str
    # The account that owns the file system and its snapshots.
    account: str
    file_system_type: str
    status: str
    capacity_gib: int
    expired_time: datetime.datetime | None
    created_at: datetime.datetime
    # Set once the file system is released; it then counts as gone.
    released_at: datetime.datetime | None
    # Set once a worker made sure the file system's storage exists.
    provisioned_at: datetime.datetime | None
    # Whether the expired time had passed by the database clock when read.
    expired: bool

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> FileSystemRecord:
        return cls(**dict(row))


async def get(connection: asyncpg.Connection, file_system_id: str) -> FileSystemRecord | None:
    row = await connection.fetchrow(f"SELECT {_COLUMNS} FROM file_systems WHERE file_system_id = $1", file_system_id)
    return FileSystemRecord.from_row(row) if row else None


async def lock(connection: asyncpg.Connection, file_system_id: str) -> FileSystemRecord | None:
    """Lock the file system's row until the transaction ends, and return it.

    This row lock is the per-file-system lock: every path that changes the
    file system's snapshots takes it first, so their checks and writes
    cannot interleave.
    """
    row = await connection.fetchrow(
        f"SELECT {_COLUMNS} FROM file_systems WHERE file_system_id = $1 FOR UPDATE", file_system_id
    )
    return FileSystemRecord.from_row(row) if row else None


async def insert(
    connection: asyncpg.Connection,
    file_system_id: str,
    account: str,
    file_system_type: str,
    status: str,
    capacity_gib: int,
    expired_time: datetime.datetime | None,
) -> FileSystemRecord | None:
    """Insert a file system; return None when the id is already taken."""
    row = await connection.fetchrow(
        f"""
        INSERT INTO file_systems (file_system_id, account, file_system_type, status, capacity_gib, expired_time)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (file_system_id) DO NOTHING
        RETURNING {_COLUMNS}
        """,
        file_system_id,
        account,
        file_system_type,
        status,
        capacity_gib,
        expired_time,
    )
    return FileSystemRecord.from_row(row) if row else None


async def update(
    connection: asyncpg.Connection,
    file_system_id: str,
    status: str,
    expired_time: datetime.datetime | None,
) -> FileSystemRecord:
    row = await connection.fetchrow(
        f"""
        UPDATE file_systems SET status = $2, expired_time = $3, updated_at = now()
        WHERE file_system_id = $1
        RETURNING {_COLUMNS}
        """,
        file_system_id,
        status,
        expired_time,
    )
    return FileSystemRecord.from_row(row)


async def count(connection: asyncpg.Connection, file_system_ids: list[str]) -> int:
    if file_system_ids:
        return await connection.fetchval(
            "SELECT count(*) FROM file_systems WHERE file_system_id = ANY($1::text[]) AND released_at IS NULL",
            file_system_ids,
        )
    return await connection.fetchval("SELECT count(*) FROM file_systems WHERE released_at IS NULL")


async def list_page(
    connection: asyncpg.Connection, file_system_ids: list[str], limit: int, offset: int
) -> list[FileSystemRecord]:
    """Return file systems that are not released, newest first, optionally only the given ids."""
    rows = await connection.fetch(
        f"""
        SELECT {_COLUMNS} FROM file_systems
        WHERE released_at IS NULL AND (cardinality($1::text[]) = 0 OR file_system_id = ANY($1::text[]))
        ORDER BY created_at DESC, file_system_id DESC
        LIMIT $2 OFFSET $3
        """,
        file_system_ids,
        limit,
        offset,
    )
    return [FileSystemRecord.from_row(row) for row in rows]


async def release(connection: asyncpg.Connection, file_system_id: str) -> None:
    await connection.execute(
        "UPDATE file_systems SET released_at = now(), updated_at = now() WHERE file_system_id = $1", file_system_id
    )


async def mark_provisioned(connection: asyncpg.Connection, file_system_id: str) -> None:
    await connection.execute(
        "UPDATE file_systems SET provisioned_at = now() WHERE file_system_id = $1", file_system_id
    )
