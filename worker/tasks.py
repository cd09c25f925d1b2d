"""What a worker does with each message: create or delete a snapshot, provision or release a file system.

A handler returns an `Outcome`. DONE means the message may be acked: the
work is finished, failed for good, or no longer needed. RETRY
means the message goes back to the queue, because a dependency was down
or another worker holds the snapshot's lease.

Snapshot creation is guarded by a lease on the snapshot row (owner and
expiry). The worker renews it while the driver copies, and every write
it makes names itself as the owner, so a worker that lost its lease
(because it stalled past the expiry, or the snapshot was deleted)
changes nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import logging
import threading

from service.errors import ServiceUnavailable
from service.logs import bind_ids
from service.store import file_systems, snapshots
from service.store.database import Database
from worker.drivers.base import DriverError, Progress, SnapshotCancelled, StorageDriver

__all__ = ["Outcome", "SnapshotTasks"]

logger = logging.getLogger(__name__)


class Outcome(enum.Enum):
    DONE = "done"
    RETRY = "retry"


class SnapshotTasks:
    """Message handlers that share one database pool and one storage driver."""

    def __init__(
        self,
        database: Database,
        driver: StorageDriver,
        owner: str,
        *,
        lease_seconds: float = 30.0,
        heartbeat_interval: float = 1.0,
    ) -> None:
        self._database = database
        self._driver = driver
        self._owner = owner
        self._lease_seconds = lease_seconds
        self._heartbeat_interval = heartbeat_interval

    async def provision_file_system(self, file_system_id: str) -> Outcome:
        with bind_ids(file_system_id=file_system_id):
            try:
                async with self._database.transaction() as connection:
                    current = await file_systems.get(connection, file_system_id)
            except ServiceUnavailable:
                return Outcome.RETRY

            # Queues do not order messages across kinds: a release may have
            # been handled first, and its storage must not come back.
            if current is None or current.released_at is not None:
                logger.info("Not provisioning storage for a file system that is released or unknown")
                return Outcome.DONE

            await self._driver.provision_file_system(file_system_id)
            logger.info("File system storage is ready")
            return Outcome.DONE

    async def release_file_system(self, file_system_id: str) -> Outcome:
        with bind_ids(file_system_id=file_system_id):
            await self._driver.release_file_system(file_system_id)
            logger.info("Released file system storage")
            return Outcome.DONE

    async def delete_snapshot(self, snapshot_id: str, file_system_id: str) -> Outcome:
        """Remove a deleted snapshot's data; a live snapshot is left alone."""
        with bind_ids(snapshot_id=snapshot_id, file_system_id=file_system_id):
            try:
                async with self._database.transaction() as connection:
                    current = await snapshots.get(connection, snapshot_id)
                if current is None or current.deleted_at is None:
                    logger.warning("Ignoring a delete message for a snapshot that is not deleted")
                    return Outcome.DONE

                await self._driver.delete_snapshot(file_system_id, snapshot_id)

                async with self._database.transaction() as connection:
                    await snapshots.mark_data_removed(connection, snapshot_id)
            except ServiceUnavailable:
                logger.warning("Database unavailable during snapshot deletion; the message will be retried")
                return Outcome.RETRY
            except DriverError as exc:
                logger.error("Removing the snapshot's data failed; the message will be retried: %s", exc)
                return Outcome.RETRY

            logger.info("Snapshot data removed (deleted by %s)", current.deletion_reason)
            return Outcome.DONE

    async def create_snapshot(self, snapshot_id: str, file_system_id: str) -> Outcome:
        with bind_ids(snapshot_id=snapshot_id, file_system_id=file_system_id):
            try:
                return await self._create_snapshot(snapshot_id, file_system_id)
            except ServiceUnavailable:
                logger.warning("Database unavailable during snapshot creation; the message will be retried")
                return Outcome.RETRY

    async def _create_snapshot(self, snapshot_id: str, file_system_id: str) -> Outcome:
        # Claim the snapshot, or learn why it needs no work.
        async with self._database.transaction() as connection:
            claimed = await snapshots.claim(connection, snapshot_id, self._owner, self._lease_seconds)
            current = claimed or await snapshots.get(connection, snapshot_id)

        if claimed is None:
            if current is None or current.status != "progressing" or current.deleted_at is not None:
                logger.debug("Snapshot needs no work (status %s)", current.status if current else "missing")
                return Outcome.DONE
            logger.info("Snapshot is leased by %s until %s; retrying later", current.lease_owner, current.lease_expires_at)
            return Outcome.RETRY

        logger.info("Creating snapshot (attempt %d)", claimed.attempts)

        # Copy, while a heartbeat renews the lease and stores progress.
        cancel = threading.Event()
        # The copying thread appends; the heartbeat reads the newest entry.
        latest: collections.deque[Progress] = collections.deque(maxlen=1)
        heartbeat = asyncio.create_task(self._heartbeat(snapshot_id, latest, cancel), name=f"heartbeat-{snapshot_id}")
        try:
            result = await self._driver.create_snapshot(file_system_id, snapshot_id, latest.append, cancel)
        except SnapshotCancelled:
            logger.warning("Snapshot creation stopped: this worker lost the snapshot")
            return Outcome.DONE
        except DriverError as exc:
            return await self._fail(snapshot_id, str(exc))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

        # Record the result under the file system lock, like every other
        # change to the file system's snapshots.
        async with self._database.transaction() as connection:
            await file_systems.lock(connection, file_system_id)
            completed = await snapshots.complete(connection, snapshot_id, self._owner, result.size_bytes)

        if completed:
            logger.info("Snapshot accomplished: %d bytes", result.size_bytes)
            return Outcome.DONE

        # The snapshot was deleted (or taken over) while the copy ran. A
        # deleted snapshot must not come back, so remove what this worker
        # made; the delete worker may have run before the copy was in place.
        async with self._database.transaction() as connection:
            current = await snapshots.get(connection, snapshot_id)
        if current is not None and current.deleted_at is not None:
            logger.info("Snapshot was deleted while it was being created; removing its data")
            return await self.delete_snapshot(snapshot_id, file_system_id)
        logger.warning("Snapshot was copied but another worker took over its lease; result not recorded")
        return Outcome.DONE

    async def _fail(self, snapshot_id: str, reason: str) -> Outcome:
        async with self._database.transaction() as connection:
            failed = await snapshots.fail(connection, snapshot_id, self._owner, reason)
        if failed:
            logger.error("Snapshot failed: %s", reason)
        return Outcome.DONE

    async def _heartbeat(
        self, snapshot_id: str, latest: collections.deque[Progress], cancel: threading.Event
    ) -> None:
        """Renew the lease and store progress until cancelled; stop the copy if the lease is lost."""
        while True:
            await asyncio.sleep(self._heartbeat_interval)

            progress = latest[-1] if latest else Progress(0, 0, None)
            try:
                async with self._database.transaction() as connection:
                    held = await snapshots.heartbeat(
                        connection,
                        snapshot_id,
                        self._owner,
                        self._lease_seconds,
                        progress.percent,
                        progress.remain_seconds or 0,
                    )
            except ServiceUnavailable:
                # The lease outlives a short outage; keep copying.
                logger.warning("Cannot renew the lease while the database is unavailable")
                continue

            if not held:
                cancel.set()
                return
