"""Run the workers: `python -m worker` consumes RabbitMQ messages until SIGTERM.

`python -m worker replay-dead-letters [--limit N]` moves dead-lettered
messages back to their work queues and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from service.logs import configure_logging
from service.metrics import serve_metrics
from service.runtime import open_database, stop_on_signals
from service.settings import Settings, SettingsError
from worker.app import Worker
from worker.dead_letters import replay_dead_letters
from worker.drivers.base import DriverUnavailable

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=("run", "replay-dead-letters"), default="run")
    parser.add_argument("--limit", type=int, default=None, help="replay at most this many messages")
    arguments = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"nas-snapshots worker: invalid setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, settings.secrets)
    if settings.metrics_address and arguments.command == "run":
        serve_metrics(settings.metrics_address)

    if arguments.command == "replay-dead-letters":
        replayed = asyncio.run(replay_dead_letters(settings.amqp_url, arguments.limit))
        logger.info("Replayed %d dead-lettered messages", replayed)
        return 0

    try:
        asyncio.run(run(settings))
    except DriverUnavailable as exc:
        logger.error("Cannot start the %s storage driver: %s", settings.driver, exc)
        return 1
    except (OSError, TimeoutError) as exc:
        logger.error("Cannot reach a dependency: %s. Are PostgreSQL and RabbitMQ running?", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
