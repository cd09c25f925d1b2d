"""Refreshes the gauges that describe the whole system, not one process.

The oldest progressing snapshot, the outbox backlog and the dead-letter
queue's depth come from PostgreSQL and RabbitMQ, so every worker reads
them every 15 seconds; Prometheus shows the same values from each pod.
"""

from __future__ import annotations

import asyncio
import logging

from aio_pika.abc import AbstractChannel

from service import metrics
from service.errors import ServiceUnavailable
from service.store.database import Database
from worker import topology

__all__ = ["refresh_gauges"]

logger = logging.getLogger(__name__)

_INTERVAL = 15.0


async def refresh_gauges(database: Database, channel: AbstractChannel) -> None:
    """Refresh until cancelled; a failed read leaves the previous value."""
    while True:
        try:
            async with database.transaction(readonly=True) as connection:
                oldest = await connection.fetchval(
                    """
                    SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM snapshots
                    WHERE status = 'progressing' AND deleted_at IS NULL
                    """
                )
                backlog = await connection.fetchval("SELECT count(*) FROM outbox")
            metrics.OLDEST_PROGRESSING_SECONDS.set(float(oldest))
            metrics.OUTBOX_BACKLOG.set(backlog)
        except ServiceUnavailable:
            logger.debug("Gauges not refreshed: the database is unavailable")

        try:
            queue = await channel.declare_queue(topology.DEAD_LETTER_QUEUE, passive=True)
            metrics.DEAD_LETTERED.set(queue.declaration_result.message_count or 0)
        except Exception as exc:
            logger.debug("Dead-letter depth not refreshed: %s", exc)

        await asyncio.sleep(_INTERVAL)
