"""The reconciler: makes storage and the snapshot rows agree again.

Crashes, restores from backup and hands on the storage can leave data
without a row, or a row without its data. Every worker replica runs a
reconciler, but a session advisory lock lets only one run at a time.

- Snapshot data older than the grace period whose row is missing,
  deleted or failed is removed. Data of a snapshot in creation is left to
  its worker and the reaper. The grace period protects a copy whose row
  a concurrent transaction has not committed yet.
- An accomplished snapshot whose data is gone is marked failed, with the
  reason, so that DescribeSnapshots stops promising data it cannot give.

NOTE: the check of accomplished snapshots reads every one of them, so its
cost grows with the number of snapshots, not with the changes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from service import metrics
from service.errors import ServiceUnavailable
from service.store import snapshots
from service.store.database import Database
from worker.drivers.base import DriverError, StorageDriver

__all__ = ["Reconciler", "ReconcileReport"]

logger = logging.getLogger(__name__)

# Arbitrary constant, unique to this service, that names the reconciler's lock.
_RECONCILE_LOCK_KEY = 0x6E61_7333


@dataclasses.dataclass
class ReconcileReport:
    removed: list[str] = dataclasses.field(default_factory=list)
    marked_failed: list[str] = dataclasses.field(default_factory=list)


class Reconciler:
    def __init__(
        self, database: Database, driver: StorageDriver, *, interval: float = 600.0, grace_seconds: float = 3600.0
    ) -> None:
        self._database = database
        self._driver = driver
        self._interval = interval
        self._grace_seconds = grace_seconds

    async def run(self) -> None:
        """Reconcile every interval until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.reconcile()
            except (ServiceUnavailable, DriverError) as exc:
                logger.warning("Reconciliation skipped: %s", exc)

    async def reconcile(self) -> ReconcileReport | None:
        """Run once; return what changed, or None if another replica is reconciling."""
        async with self._database.exclusive(_RECONCILE_LOCK_KEY) as connection:
            if connection is None:
                logger.debug("Another replica is reconciling; skipping this run")
                return None
            return await self._reconcile()

    async def _reconcile(self) -> ReconcileReport:
        report = ReconcileReport()

        # Data whose row shows it should not exist.
        stored = await self._driver.list_snapshots()
        async with self._database.transaction(readonly=True) as connection:
            rows = await snapshots.get_many(connection, sorted({item.snapshot_id for item in stored}))
        cutoff = time.time() - self._grace_seconds
        for item in stored:
            row = rows.get(item.snapshot_id)
            if item.modified_at > cutoff or not _is_orphan(row):
                continue
            await self._driver.delete_snapshot(item.file_system_id, item.snapshot_id)
            report.removed.append(item.snapshot_id)
            logger.warning(
                "Removed data of snapshot %s of file system %s: its row is %s",
                item.snapshot_id,
                item.file_system_id,
                _row_state(row),
            )

        # Rows whose data is gone.
        async with self._database.transaction(readonly=True) as connection:
            accomplished = await snapshots.live_accomplished(connection)
        complete = {item.snapshot_id for item in stored if item.complete}
        for snapshot_id, file_system_id in accomplished:
            if snapshot_id in complete or await self._driver.snapshot_exists(file_system_id, snapshot_id):
                continue
            async with self._database.transaction() as connection:
                changed = await snapshots.mark_data_missing(
                    connection, snapshot_id, "The snapshot's data is missing from storage."
                )
            if changed:
                metrics.SNAPSHOTS_FAILED.inc()
                report.marked_failed.append(snapshot_id)
                logger.error("Snapshot %s of file system %s has no data in storage; marked failed", snapshot_id, file_system_id)

        return report


def _row_state(row: snapshots.SnapshotRecord | None) -> str:
    if row is None:
        return "missing"
    if row.deleted_at is not None:
        return "deleted"
    return row.status


def _is_orphan(row: snapshots.SnapshotRecord | None) -> bool:
    return row is None or row.deleted_at is not None or row.status == "failed"
