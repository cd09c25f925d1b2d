"""Run the workers: `python -m worker` consumes RabbitMQ messages until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from service.logs import configure_logging
from service.runtime import open_database, stop_on_signals
from service.settings import Settings, SettingsError
from worker.app import Worker

logger = logging.getLogger("worker")

# Seconds a snapshot in progress may take to finish after SIGTERM before
# its message is handed back to the broker.
_SHUTDOWN_GRACE = 20.0


async def run(settings: Settings) -> None:
    database = await open_database(settings, "nas-snapshots-worker")
    try:
        worker = Worker(settings, database)
        stop = stop_on_signals("Worker")
        await worker.start()
        await stop.wait()
        await worker.stop(_SHUTDOWN_GRACE)
    finally:
        await database.close()


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"nas-snapshots worker: invalid setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)

    try:
        asyncio.run(run(settings))
    except (OSError, TimeoutError) as exc:
        logger.error("Cannot reach a dependency: %s. Are PostgreSQL and RabbitMQ running?", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
