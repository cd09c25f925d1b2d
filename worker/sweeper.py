"""The retention sweeper: deletes snapshots whose expiry has passed.

Every worker replica runs one, and they may run at the same moment:

- A run first takes a session advisory lock with `pg_try_advisory_lock`.
  A replica that does not get it skips the run, so runs never overlap,
  whichever replica is slow.
- Within a run, due rows are claimed with `FOR UPDATE SKIP LOCKED` and
  marked deleted by a compare-and-set (`deleted_at IS NULL`), so even
  without the lock no snapshot could be picked twice.
- Each batch marks its snapshots deleted and writes their delete
  messages to the outbox in one transaction, so the workers remove the
  data exactly as for DeleteSnapshot.

Due means `expires_at <= now()` by the database clock; tests pass their
own `now`. Every snapshot with an expiry takes part, whatever its status:
a progressing one is cancelled, and a failed one stops counting toward
the snapshot limit. Snapshots kept forever have no expiry and are never
selected.
"""

from __future__ import annotations

import asyncio
import datetime
import logging

import asyncpg

from service import messages, metrics
from service.errors import ServiceUnavailable
from service.store import client_tokens, outbox, request_counts, snapshots
from service.store.database import Database

__all__ = ["CLIENT_TOKEN_LIFETIME_SECONDS", "RetentionSweeper"]

logger = logging.getLogger(__name__)

# Client tokens are kept twice the 24 hours the API promises.
CLIENT_TOKEN_LIFETIME_SECONDS = 48 * 3600

# Arbitrary constant, unique to this service, that names the sweeper's lock.
_SWEEP_LOCK_KEY = 0x6E61_7332


class RetentionSweeper:
    def __init__(self, database: Database, *, interval: float, batch_size: int = 500) -> None:
        self._database = database
        self._interval = interval
        self._batch_size = batch_size

    async def run(self) -> None:
        """Sweep every interval until cancelled."""
        while True:
            try:
                await self.sweep()
            except ServiceUnavailable:
                logger.warning("Retention sweep skipped: the database is unavailable")
            await asyncio.sleep(self._interval)

    async def sweep(self, now: datetime.datetime | None = None) -> int | None:
        """Delete every snapshot due at `now`; return how many, or None if another sweep runs."""
        async with self._database.exclusive(_SWEEP_LOCK_KEY) as connection:
            if connection is None:
                logger.debug("Another replica is sweeping; skipping this run")
                return None
            return await self._sweep_locked(connection, now)

    async def _sweep_locked(self, connection: asyncpg.Connection, now: datetime.datetime | None) -> int:
        # Warn when expired snapshots wait much longer than one interval:
        # the sweeper was down, or cannot keep up.
        lag = await snapshots.oldest_overdue(connection, now)
        metrics.SWEEPER_LAG_SECONDS.set(lag.total_seconds() if lag is not None else 0)
        if lag is not None and lag.total_seconds() > 2 * self._interval:
            logger.warning("The oldest expired snapshot has waited %s for deletion", lag)

        swept = 0
        while True:
            async with connection.transaction():
                due = await snapshots.delete_due(connection, now, self._batch_size)
                await outbox.enqueue_many(
                    connection,
                    messages.DELETE_SNAPSHOT,
                    [{"snapshot_id": snapshot_id, "file_system_id": file_system_id} for snapshot_id, file_system_id in due],
                )
            for snapshot_id, file_system_id in due:
                logger.info("Snapshot %s of file system %s expired; deleting it", snapshot_id, file_system_id)
            swept += len(due)
            metrics.SNAPSHOTS_DELETED.labels("retention").inc(len(due))
            if len(due) < self._batch_size:
                break

        if swept:
            logger.info("Retention sweep deleted %d snapshots", swept)

        # Throttling counts are needed only for the current window, and the
        # API promises to honour a client token for at least 24 hours.
        await request_counts.purge_before(connection, 3600)
        await client_tokens.purge_older_than(connection, CLIENT_TOKEN_LIFETIME_SECONDS)
        return swept
