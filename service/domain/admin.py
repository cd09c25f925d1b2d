"""Operator recovery of stuck snapshots: mark failed, or re-drive.

Both actions take the file system's lock and then change the snapshot
with a compare-and-set on `status = 'progressing'`, like the worker and
the reaper. A worker finishing the same snapshot therefore either
commits first, and the reset is rejected, or finds the snapshot changed
and records nothing.
"""

from __future__ import annotations

import logging

import asyncpg

from service import messages, metrics
from service.errors import IncorrectSnapshotStatus, SnapshotNotFound
from service.store import file_systems, outbox, snapshots
from service.store.database import Database
from service.store.snapshots import SnapshotRecord

__all__ = ["fail_snapshot", "redrive_snapshot"]

logger = logging.getLogger(__name__)


async def fail_snapshot(database: Database, snapshot_id: str, reason: str) -> SnapshotRecord:
    async with database.transaction() as connection:
        current = await _lock_progressing(connection, snapshot_id)
        await snapshots.fail(connection, snapshot_id, None, f"Reset by an operator: {reason or 'no reason given'}")
        updated = await snapshots.get(connection, snapshot_id)

    metrics.SNAPSHOTS_FAILED.inc()
    logger.warning(
        "Operator marked snapshot %s of file system %s failed: %s", snapshot_id, current.file_system_id, reason
    )
    return updated


async def redrive_snapshot(database: Database, snapshot_id: str, reason: str) -> SnapshotRecord:
    async with database.transaction() as connection:
        current = await _lock_progressing(connection, snapshot_id)
        await connection.execute("UPDATE snapshots SET attempts = 0 WHERE snapshot_id = $1", snapshot_id)
        await snapshots.redrive(connection, snapshot_id)
        await outbox.enqueue(
            connection,
            messages.CREATE_SNAPSHOT,
            {"snapshot_id": snapshot_id, "file_system_id": current.file_system_id},
        )
        updated = await snapshots.get(connection, snapshot_id)

    logger.warning(
        "Operator re-drove snapshot %s of file system %s: %s", snapshot_id, current.file_system_id, reason
    )
    return updated


async def _lock_progressing(connection: asyncpg.Connection, snapshot_id: str) -> SnapshotRecord:
    found = await snapshots.get(connection, snapshot_id)
    if found is None or found.deleted_at is not None:
        raise SnapshotNotFound(snapshot_id)

    await file_systems.lock(connection, found.file_system_id)
    current = await snapshots.get_for_update(connection, snapshot_id)
    if current.deleted_at is not None:
        raise SnapshotNotFound(snapshot_id)
    if current.status != "progressing":
        raise IncorrectSnapshotStatus(
            f"The snapshot {snapshot_id} is {current.status}; only a progressing snapshot can be reset."
        )
    return current
