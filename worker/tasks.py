"""What a worker does with each message: create or delete a snapshot, provision or release a file system.

A handler returns an `Outcome`. DONE means the message may be acked: the
work is finished, failed for good, or no longer needed. RETRY means the
message goes back to the queue after a delay, because of a failure that
may pass. A retry that counts as an attempt ends, after the set number
of deliveries, in `give_up`. A database outage never does, because
nothing can be recorded while it lasts.

Snapshot creation is guarded by a lease on the snapshot row (owner and
expiry). The worker renews it while the driver copies, and every write
it makes names itself as the owner, so a worker that lost its lease
(because it stalled past the expiry, or the snapshot was deleted)
changes nothing. A message for a snapshot whose lease another worker has is
acked: the holder finishes it, or the reaper re-drives it once the lease
expires.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import logging
import threading

from service import messages, metrics
from service.errors import ServiceUnavailable
from service.logs import bind_ids
from service.store import file_systems, snapshots
from service.store.database import Database
from worker.drivers.base import (
    DriverError,
    FileSystemMissing,
    Progress,
    SnapshotCancelled,
    SnapshotResult,
    StorageDriver,
)

__all__ = ["DONE", "Outcome", "SnapshotTasks"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Outcome:
    retry: bool = False
    # Why the work must be retried; becomes the failure reason in the end.
    reason: str = ""
    # False for failures of the database itself, which no number of
    # deliveries should turn into a failed snapshot.
    counts_as_attempt: bool = True


DONE = Outcome()


def _retry(reason: str, *, counts_as_attempt: bool = True) -> Outcome:
    return Outcome(retry=True, reason=reason, counts_as_attempt=counts_as_attempt)


_DATABASE_DOWN = _retry("the database is unavailable", counts_as_attempt=False)


class SnapshotTasks:
    """Message handlers that share one database pool and one storage driver."""

    def __init__(
        self,
        database: Database,
        driver: StorageDriver,
        owner: str,
        *,
        lease_seconds: float = 30.0,
        max_attempts: int = 5,
        heartbeat_interval: float = 1.0,
    ) -> None:
        self._database = database
        self._driver = driver
        self._owner = owner
        self._lease_seconds = lease_seconds
        self._max_attempts = max_attempts
        self._heartbeat_interval = min(heartbeat_interval, lease_seconds / 3)

    @property
    def driver(self) -> StorageDriver:
        return self._driver

    async def handle(self, routing_key: str, payload: dict[str, str]) -> Outcome:
        """Run the handler for a message; KeyError means the message cannot be read."""
        try:
            if routing_key == messages.CREATE_SNAPSHOT:
                return await self.create_snapshot(payload["snapshot_id"], payload["file_system_id"])
            if routing_key == messages.DELETE_SNAPSHOT:
                return await self.delete_snapshot(payload["snapshot_id"], payload["file_system_id"])
            if routing_key == messages.PROVISION_FILE_SYSTEM:
                return await self.provision_file_system(payload["file_system_id"])
            if routing_key == messages.RELEASE_FILE_SYSTEM:
                return await self.release_file_system(payload["file_system_id"])
        except ServiceUnavailable:
            logger.warning("Database unavailable while handling %s; the message will be retried", routing_key)
            return _DATABASE_DOWN
        raise KeyError(f"unknown routing key {routing_key!r}")

    async def give_up(self, routing_key: str, payload: dict[str, str], reason: str, attempts: int) -> None:
        """Record that a message failed for good; the caller then dead-letters it."""
        if routing_key != messages.CREATE_SNAPSHOT:
            logger.error("Giving up on %s %s after %d attempts: %s", routing_key, payload, attempts, reason)
            return

        snapshot_id = payload["snapshot_id"]
        with bind_ids(snapshot_id=snapshot_id, file_system_id=payload.get("file_system_id")):
            async with self._database.transaction() as connection:
                failed = await snapshots.fail(
                    connection, snapshot_id, None, f"Creation failed after {attempts} attempts: {reason}"
                )
            if failed:
                metrics.SNAPSHOTS_FAILED.inc()
                logger.error("Snapshot failed after %d attempts: %s", attempts, reason)

    async def provision_file_system(self, file_system_id: str) -> Outcome:
        with bind_ids(file_system_id=file_system_id):
            async with self._database.transaction() as connection:
                current = await file_systems.get(connection, file_system_id)

            # Queues do not order messages across kinds: a release may have
            # been handled first, and its storage must not come back.
            if current is None or current.released_at is not None:
                logger.info("Not provisioning storage for a file system that is released or unknown")
                return DONE

            try:
                await self._driver.provision_file_system(file_system_id)
            except DriverError as exc:
                logger.warning("Provisioning storage failed: %s", exc)
                return _retry(str(exc))

            async with self._database.transaction() as connection:
                await file_systems.mark_provisioned(connection, file_system_id)
            logger.info("File system storage is ready")
            return DONE

    async def release_file_system(self, file_system_id: str) -> Outcome:
        with bind_ids(file_system_id=file_system_id):
            try:
                await self._driver.release_file_system(file_system_id)
            except DriverError as exc:
                logger.warning("Removing the file system's storage failed: %s", exc)
                return _retry(str(exc))
            logger.info("Released file system storage")
            return DONE

    async def delete_snapshot(self, snapshot_id: str, file_system_id: str) -> Outcome:
        """Remove a deleted snapshot's data; a live snapshot is left alone."""
        with bind_ids(snapshot_id=snapshot_id, file_system_id=file_system_id):
            async with self._database.transaction() as connection:
                current = await snapshots.get(connection, snapshot_id)
            if current is None or current.deleted_at is None:
                logger.warning("Ignoring a delete message for a snapshot that is not deleted")
                return DONE

            try:
                await self._driver.delete_snapshot(file_system_id, snapshot_id)
            except DriverError as exc:
                logger.warning("Removing the snapshot's data failed: %s", exc)
                return _retry(str(exc))

            async with self._database.transaction() as connection:
                await snapshots.mark_data_removed(connection, snapshot_id)
            logger.info("Snapshot data removed (deleted by %s)", current.deletion_reason)
            return DONE

    async def create_snapshot(self, snapshot_id: str, file_system_id: str) -> Outcome:
        with bind_ids(snapshot_id=snapshot_id, file_system_id=file_system_id):
            return await self._create_snapshot(snapshot_id, file_system_id)

    async def _create_snapshot(self, snapshot_id: str, file_system_id: str) -> Outcome:
        # Claim the snapshot, or learn why it needs no work here.
        async with self._database.transaction() as connection:
            claimed = await snapshots.claim(connection, snapshot_id, self._owner, self._lease_seconds)
            current = claimed or await snapshots.get(connection, snapshot_id)

        if claimed is None:
            if current is None or current.status != "progressing" or current.deleted_at is not None:
                logger.debug("Snapshot needs no work (status %s)", current.status if current else "missing")
            else:
                logger.info(
                    "Snapshot is leased by %s until %s; leaving it to that worker",
                    current.lease_owner,
                    current.lease_expires_at,
                )
            return DONE

        # Attempts count claims, so a worker that dies on every attempt
        # (and never reaches the retry limit of its messages) stops too.
        if claimed.attempts > self._max_attempts:
            reason = claimed.last_error or "the worker handling it stopped before it finished"
            await self._fail(snapshot_id, f"Creation failed after {self._max_attempts} attempts: {reason}")
            return DONE

        logger.info("Creating snapshot (attempt %d)", claimed.attempts)
        metrics.SNAPSHOTS_IN_FLIGHT.inc()
        try:
            result = await self._copy(snapshot_id, file_system_id)
        except SnapshotCancelled:
            logger.warning("Snapshot creation stopped: this worker lost the snapshot")
            return DONE
        except FileSystemMissing as exc:
            return await self._on_missing_data(snapshot_id, file_system_id, str(exc))
        except asyncio.CancelledError:
            # Shutdown: hand the snapshot back so another worker can claim
            # it at once instead of waiting for the lease to expire.
            await asyncio.shield(self._release_lease(snapshot_id, "the worker stopped during the copy"))
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, DriverError) else f"{type(exc).__name__}: {exc}"
            logger.warning("Snapshot creation attempt failed: %s", reason, exc_info=not isinstance(exc, DriverError))
            await self._release_lease(snapshot_id, reason)
            return _retry(reason)
        finally:
            metrics.SNAPSHOTS_IN_FLIGHT.dec()

        # Record the result under the file system lock, like every other
        # change to the file system's snapshots.
        async with self._database.transaction() as connection:
            await file_systems.lock(connection, file_system_id)
            completed = await snapshots.complete(connection, snapshot_id, self._owner, result.size_bytes)

        if completed:
            metrics.SNAPSHOTS_CREATED.inc()
            metrics.CREATION_SECONDS.observe((datetime.datetime.now(datetime.UTC) - claimed.created_at).total_seconds())
            logger.info("Snapshot accomplished: %d bytes", result.size_bytes)
            return DONE

        # The snapshot was deleted (or taken over) while the copy ran. A
        # deleted snapshot must not come back, so remove what this worker
        # made; the delete worker may have run before the copy was in place.
        async with self._database.transaction() as connection:
            current = await snapshots.get(connection, snapshot_id)
        if current is not None and current.deleted_at is not None:
            logger.info("Snapshot was deleted while it was being created; removing its data")
            return await self.delete_snapshot(snapshot_id, file_system_id)
        logger.warning("Snapshot was copied but another worker took over its lease; result not recorded")
        return DONE

    async def _copy(self, snapshot_id: str, file_system_id: str) -> SnapshotResult:
        """Run the driver while a heartbeat renews the lease and stores progress."""
        cancel = threading.Event()
        # The copying thread appends; the heartbeat reads the newest entry.
        latest: collections.deque[Progress] = collections.deque(maxlen=1)
        heartbeat = asyncio.create_task(self._heartbeat(snapshot_id, latest, cancel), name=f"heartbeat-{snapshot_id}")
        try:
            return await self._driver.create_snapshot(file_system_id, snapshot_id, latest.append, cancel)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _on_missing_data(self, snapshot_id: str, file_system_id: str, reason: str) -> Outcome:
        """Wait for storage that is still being provisioned; fail a snapshot whose data is gone."""
        async with self._database.transaction() as connection:
            file_system = await file_systems.get(connection, file_system_id)
        if file_system is not None and file_system.provisioned_at is None:
            # The creation message overtook the provisioning message.
            waiting = f"the storage of file system {file_system_id} is not provisioned yet"
            await self._release_lease(snapshot_id, waiting)
            return _retry(waiting)

        # Retrying cannot make the data appear.
        await self._fail(snapshot_id, reason)
        return DONE

    async def _fail(self, snapshot_id: str, reason: str) -> None:
        async with self._database.transaction() as connection:
            failed = await snapshots.fail(connection, snapshot_id, self._owner, reason)
        if failed:
            metrics.SNAPSHOTS_FAILED.inc()
            logger.error("Snapshot failed: %s", reason)

    async def _release_lease(self, snapshot_id: str, reason: str) -> None:
        try:
            async with self._database.transaction() as connection:
                await snapshots.release_lease(connection, snapshot_id, self._owner, reason)
        except ServiceUnavailable:
            # The lease expires by itself; the snapshot is only delayed.
            logger.warning("Could not hand back the lease while the database is unavailable")

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
