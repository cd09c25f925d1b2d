"""CreateSnapshot admission, DeleteSnapshot and DescribeSnapshots.

Admission runs its checks in a fixed order, in one PostgreSQL function
call that holds the file system's row lock (`nas_admit_snapshot`, in the
migrations), so the result is the same however concurrent calls
interleave, and a call costs one round trip:

1. parameters (checked by the caller, before any database work);
2. throttling: the call counts toward the account's limit;
3. the file system exists and belongs to the caller's account;
4. a client token replay returns the first call's snapshot id;
5. the file system supports snapshots and is in normal status;
6. the snapshot limit;
7. one snapshot in creation at a time.

The function reports which rule stopped the call; this module turns that
outcome into the domain error and its message.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import asyncpg

from service import messages, metrics
from service.domain import ids
from service.domain.throttling import ThrottlePolicy
from service.domain.validation import CreateSnapshotParams, Page
from service.errors import (
    FileSystemNotFound,
    FileSystemTypeNotSupported,
    IdempotentParameterMismatch,
    IncorrectFileSystemStatus,
    NasError,
    SnapshotCreating,
    SnapshotNotFound,
    SnapshotQuotaExceeded,
    Throttled,
)
from service.store import file_systems, outbox, snapshots
from service.store.database import Database

__all__ = ["Admission", "admit_snapshot", "delete_snapshot", "describe_snapshots"]

logger = logging.getLogger(__name__)

_UNIQUE_PROGRESSING_INDEX = "snapshots_one_progressing_per_file_system"


@dataclasses.dataclass(frozen=True)
class Admission:
    snapshot_id: str
    # True when a client token matched an earlier call and nothing was written.
    replayed: bool


async def admit_snapshot(
    database: Database,
    params: CreateSnapshotParams,
    snapshot_limit: int,
    account: str,
    throttle: ThrottlePolicy = ThrottlePolicy.UNLIMITED,
) -> Admission:
    """Record a new snapshot for the caller's account, or raise the first rule it breaks."""
    try:
        outcome, snapshot_id, detail = await snapshots.admit(
            database,
            file_system_id=params.file_system_id,
            account=account,
            client_token=params.client_token,
            fingerprint=params.fingerprint(),
            snapshot_id=ids.new_snapshot_id(),
            snapshot_name=params.snapshot_name,
            description=params.description,
            retention_days=params.retention_days,
            snapshot_limit=snapshot_limit,
            throttle_limit=throttle.limit,
            throttle_window=throttle.window_seconds,
        )
    except asyncpg.UniqueViolationError as exc:
        # Only reachable if some path wrote a snapshot without the file
        # system lock; the index keeps the rule anyway.
        if exc.constraint_name != _UNIQUE_PROGRESSING_INDEX:
            raise
        logger.warning("Unique index stopped a second creation on file system %s", params.file_system_id)
        raise SnapshotCreating(_creating_message(params.file_system_id)) from exc

    if outcome == "admitted":
        return Admission(snapshot_id, replayed=False)
    if outcome == "replayed":
        logger.info("Client token replay returns snapshot %s", snapshot_id)
        return Admission(snapshot_id, replayed=True)
    raise _rejection(outcome, detail, params, snapshot_limit, account, throttle)


def _rejection(
    outcome: str,
    detail: str | None,
    params: CreateSnapshotParams,
    snapshot_limit: int,
    account: str,
    throttle: ThrottlePolicy,
) -> NasError:
    """Build the error for the rule that stopped an admission."""
    file_system_id = params.file_system_id
    if outcome == "throttled":
        return Throttled(account, throttle.limit, throttle.window_seconds, int(detail or 1))
    if outcome == "not_found":
        return FileSystemNotFound(file_system_id)
    if outcome == "mismatch":
        first = json.loads(detail or "{}")
        differing = [name for name, value in params.replayed_parameters().items() if first.get(name) != value]
        return IdempotentParameterMismatch(
            f"The client_token was already used on file system {file_system_id} with a different "
            f"{' and '.join(differing)}. Use a new token for a different request."
        )
    if outcome == "type":
        return FileSystemTypeNotSupported(
            f"The file system {file_system_id} is of type {detail}; only extreme file systems support snapshots."
        )
    if outcome == "status":
        return IncorrectFileSystemStatus(
            f"The file system {file_system_id} is in status {detail}; "
            "snapshots can be created only when it is Running."
        )
    if outcome == "expired":
        return IncorrectFileSystemStatus(
            f"The file system {file_system_id} is in status Running but expired at {detail}; "
            "renew it before creating snapshots."
        )
    if outcome == "quota":
        return SnapshotQuotaExceeded(file_system_id, snapshot_limit)
    if outcome == "creating":
        return SnapshotCreating(_creating_message(file_system_id))
    raise AssertionError(f"nas_admit_snapshot returned an unknown outcome {outcome!r}")


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
    complete it. A delete message makes a worker remove the data.
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
