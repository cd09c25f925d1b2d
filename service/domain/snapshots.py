"""CreateSnapshot admission, DeleteSnapshot and DescribeSnapshots.

Admission runs its checks in a fixed order, inside one transaction that
holds the file system's row lock, so the answer is the same however
concurrent calls interleave:

1. parameters (checked by the caller, before any database work);
2. the file system exists;
3. a client token replay returns the first call's snapshot id;
4. the file system supports snapshots and is in normal status;
5. the snapshot limit;
6. one snapshot in creation at a time.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import asyncpg

from service import messages, metrics
from service.domain import ids
from service.domain.validation import CreateSnapshotParams, Page
from service.errors import (
    FileSystemNotFound,
    FileSystemTypeNotSupported,
    IdempotentParameterMismatch,
    IncorrectFileSystemStatus,
    SnapshotCreating,
    SnapshotNotFound,
    SnapshotQuotaExceeded,
)
from service.store import client_tokens, file_systems, outbox, snapshots
from service.store.database import Database
from service.store.file_systems import FileSystemRecord

__all__ = ["Admission", "admit_snapshot", "check_normal_status", "delete_snapshot", "describe_snapshots"]

logger = logging.getLogger(__name__)

_UNIQUE_PROGRESSING_INDEX = "snapshots_one_progressing_per_file_system"


@dataclasses.dataclass(frozen=True)
class Admission:
    snapshot_id: str
    # True when a client token matched an earlier call and nothing was written.
    replayed: bool


def check_normal_status(file_system: FileSystemRecord) -> None:
    """Raise unless snapshots may be taken of the file system now."""
    if file_system.file_system_type != "extreme":
        raise FileSystemTypeNotSupported(
            f"The file system {file_system.file_system_id} is of type {file_system.file_system_type}; "
            "only extreme file systems support snapshots."
        )
    if file_system.status != "Running":
        raise IncorrectFileSystemStatus(
            f"The file system {file_system.file_system_id} is in status {file_system.status}; "
            "snapshots can be created only when it is Running."
        )
    if file_system.expired:
        expired_time = file_system.expired_time.isoformat() if file_system.expired_time else "an earlier time"
        raise IncorrectFileSystemStatus(
            f"The file system {file_system.file_system_id} is in status Running but expired at {expired_time}; "
            "renew it before creating snapshots."
        )


async def admit_snapshot(
    database: Database, params: CreateSnapshotParams, snapshot_limit: int, account: str
) -> Admission:
    """Record a new snapshot for the caller's account, or raise the first rule it breaks."""
    try:
        async with database.transaction() as connection:
            return await _admit(connection, params, snapshot_limit, account)
    except asyncpg.UniqueViolationError as exc:
        # Only reachable if some path wrote a snapshot without the file
        # system lock; the index keeps the rule anyway.
        if exc.constraint_name != _UNIQUE_PROGRESSING_INDEX:
            raise
        logger.warning("Unique index stopped a second creation on file system %s", params.file_system_id)
        raise SnapshotCreating(_creating_message(params.file_system_id)) from exc


async def _admit(
    connection: asyncpg.Connection, params: CreateSnapshotParams, snapshot_limit: int, account: str
) -> Admission:
    # The row lock serialises every admission on this file system. Another
    # account's file system looks exactly like an unknown one.
    file_system = await file_systems.lock(connection, params.file_system_id)
    if file_system is None or file_system.released_at is not None or file_system.account != account:
        raise FileSystemNotFound(params.file_system_id)

    # A replay returns the first result before any state-dependent check,
    # so a retry after the file system changed still gets its snapshot id.
    if params.client_token is not None:
        earlier = await client_tokens.find(connection, params.file_system_id, params.client_token)
        if earlier is not None:
            if earlier.fingerprint != params.fingerprint():
                first = json.loads(earlier.fingerprint)
                differing = [name for name, value in params.replayed_parameters().items() if first.get(name) != value]
                raise IdempotentParameterMismatch(
                    f"The client_token was already used on file system {params.file_system_id} with a different "
                    f"{' and '.join(differing)}. Use a new token for a different request."
                )
            logger.info("Client token replay returns snapshot %s", earlier.snapshot_id)
            return Admission(earlier.snapshot_id, replayed=True)

    check_normal_status(file_system)

    current = await snapshots.usage(connection, params.file_system_id)
    if current.count >= snapshot_limit:
        raise SnapshotQuotaExceeded(params.file_system_id, snapshot_limit)
    if current.creating:
        raise SnapshotCreating(_creating_message(params.file_system_id))

    # Write the snapshot, the token and the work message together.
    snapshot_id = ids.new_snapshot_id()
    await snapshots.insert(
        connection,
        snapshot_id=snapshot_id,
        file_system_id=params.file_system_id,
        account=account,
        snapshot_name=params.snapshot_name,
        description=params.description,
        retention_days=params.retention_days,
        source_file_system_size=file_system.capacity_gib,
    )
    if params.client_token is not None:
        await client_tokens.insert(
            connection, params.file_system_id, params.client_token, snapshot_id, params.fingerprint()
        )
    await outbox.enqueue(
        connection,
        messages.CREATE_SNAPSHOT,
        {"snapshot_id": snapshot_id, "file_system_id": params.file_system_id},
    )
    return Admission(snapshot_id, replayed=False)


def _creating_message(file_system_id: str) -> str:
    return (
        f"Another snapshot of file system {file_system_id} is still being created. "
        "Retry after it is accomplished or failed."
    )


async def describe_snapshots(
    database: Database, where: snapshots.SnapshotFilter, page: Page
) -> tuple[int, list[snapshots.SnapshotRecord]]:
    async with database.transaction(readonly=True) as connection:
        return await snapshots.describe(connection, where, page.size, page.offset)


async def delete_snapshot(database: Database, snapshot_id: str, account: str) -> bool:
    """Delete a snapshot in any state; return False if it was deleted before.

    A snapshot still being created is cancelled: its creator loses the
    lease, stops copying and removes what it wrote, and can no longer
    complete it. A delete message tells a worker to remove the data.
    """
    async with database.transaction() as connection:
        found = await snapshots.get(connection, snapshot_id)
        if found is None or found.account != account:
            raise SnapshotNotFound(snapshot_id)

        # Lock the file system before the snapshot, as every path does, so
        # the delete is ordered with admissions, completions and releases.
        await file_systems.lock(connection, found.file_system_id)
        deleted = await snapshots.mark_deleted(connection, snapshot_id, "user")
        if deleted:
            await outbox.enqueue(
                connection,
                messages.DELETE_SNAPSHOT,
                {"snapshot_id": snapshot_id, "file_system_id": found.file_system_id},
            )

    if deleted:
        metrics.SNAPSHOTS_DELETED.labels("user").inc()
        logger.info("Deleted snapshot %s (was %s)", snapshot_id, found.status)
    else:
        logger.info("Snapshot %s was already deleted", snapshot_id)
    return deleted
