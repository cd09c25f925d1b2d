"""Start-up and shutdown steps shared by the API and worker processes."""

from __future__ import annotations

import asyncio
import logging
import signal

from service.settings import Settings
from service.store.database import Database, wait_for_database
from service.store.migrate import apply_migrations

__all__ = ["STARTUP_RETRY_DELAY", "open_database", "startup_attempts", "stop_on_signals"]

logger = logging.getLogger(__name__)

# Seconds between two attempts to reach a dependency at start.
STARTUP_RETRY_DELAY = 2.0


def startup_attempts(settings: Settings) -> int:
    """Return how many attempts fit in NAS_STARTUP_TIMEOUT."""
    return max(1, int(settings.startup_timeout / STARTUP_RETRY_DELAY))


async def open_database(settings: Settings, application_name: str) -> Database:
    """Wait for PostgreSQL, apply migrations if enabled, and open the pool."""
    await wait_for_database(settings.database_url, attempts=startup_attempts(settings), delay=STARTUP_RETRY_DELAY)
    if settings.migrate_on_start:
        await apply_migrations(settings.database_url)
    return await Database.connect(
        settings.database_url,
        pool_size=settings.database_pool_size,
        timeout=settings.database_timeout,
        application_name=application_name,
    )


def stop_on_signals(process: str) -> asyncio.Event:
    """Return an event set by SIGTERM or SIGINT, so shutdown runs its steps in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _request_stop, stop, signum, process)
    return stop


def _request_stop(stop: asyncio.Event, signum: int, process: str) -> None:
    logger.info("%s received %s; shutting down", process, signal.Signals(signum).name)
    stop.set()
