"""The reaper: takes over snapshot creations whose worker is gone.

A creation's lease expires when its worker died or stalled, and a
creation that no worker claimed for a long time lost its message. Every worker
replica runs a reaper; rows are locked with `FOR UPDATE SKIP LOCKED`, so
two reapers never take the same snapshot. The reaper re-drives each such
creation with a new creation message, and the driver finds what an
earlier attempt already made under the snapshot id. A creation that used
up its attempts or its maximum duration is marked failed instead.
"""

from __future__ import annotations

import asyncio
import datetime
import logging

from service import messages, metrics
from service.errors import ServiceUnavailable
from service.store import outbox, snapshots
from service.store.database import Database

__all__ = ["Reaper"]

logger = logging.getLogger(__name__)

_BATCH_SIZE = 100


class Reaper:
    def __init__(
        self,
        database: Database,
        *,
        interval: float,
        max_attempts: int,
        max_creation_seconds: float,
        unclaimed_grace_seconds: float = 300.0,
    ) -> None:
        self._database = database
        self._interval = interval
        self._max_attempts = max_attempts
        self._max_creation = datetime.timedelta(seconds=max_creation_seconds)
        self._unclaimed_grace_seconds = unclaimed_grace_seconds

    async def run(self) -> None:
        """Reap every interval until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.reap()
            except ServiceUnavailable:
                logger.warning("Reaper run skipped: the database is unavailable")

    async def reap(self) -> int:
        """Re-drive or fail every creation without a live owner; return how many were handled."""
        async with self._database.transaction() as connection:
            now = await connection.fetchval("SELECT now()")
            stale = await snapshots.stale_creations(connection, self._unclaimed_grace_seconds, _BATCH_SIZE)

            for snapshot in stale:
                reason = _failure_reason(snapshot, now, self._max_attempts, self._max_creation)
                if reason is not None:
                    await snapshots.fail(connection, snapshot.snapshot_id, None, reason)
                    metrics.SNAPSHOTS_FAILED.inc()
                    logger.error(
                        "Snapshot %s of file system %s failed: %s", snapshot.snapshot_id, snapshot.file_system_id, reason
                    )
                    continue

                await snapshots.redrive(connection, snapshot.snapshot_id)
                await outbox.enqueue(
                    connection,
                    messages.CREATE_SNAPSHOT,
                    {"snapshot_id": snapshot.snapshot_id, "file_system_id": snapshot.file_system_id},
                )
                logger.warning(
                    "Re-driving snapshot %s of file system %s: its worker %s stopped renewing its lease",
                    snapshot.snapshot_id,
                    snapshot.file_system_id,
                    snapshot.lease_owner or "(none claimed it)",
                )
        return len(stale)


def _failure_reason(
    snapshot: snapshots.SnapshotRecord,
    now: datetime.datetime,
    max_attempts: int,
    max_creation: datetime.timedelta,
) -> str | None:
    """Return why the creation must stop, or None if it may be tried again."""
    if now - snapshot.created_at > max_creation:
        return f"Creation did not finish within {int(max_creation.total_seconds())} seconds."
    if snapshot.attempts >= max_attempts:
        last = snapshot.last_error or "the worker handling it stopped before it finished"
        return f"Creation failed after {snapshot.attempts} attempts: {last}"
    return None
