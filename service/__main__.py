"""Run the gRPC API: `python -m service`, or `python -m service migrate`.

`migrate` creates the database if it is missing and applies the schema
migrations, then exits; it is the separate migration step of a
deployment. Plain `python -m service` serves the API until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from service.api.server import ApiServer
from service.logs import configure_logging
from service.metrics import serve_metrics
from service.runtime import open_database, stop_on_signals
from service.settings import Settings, SettingsError
from service.store.migrate import apply_migrations, create_database_if_missing

logger = logging.getLogger("service")

# Seconds calls in flight may take to finish after SIGTERM.
_SHUTDOWN_GRACE = 10.0


async def serve(settings: Settings) -> None:
    database = await open_database(settings, "nas-snapshots-api")
    try:
        server = ApiServer(settings, database)
        await server.start()
        stop = stop_on_signals("API")
        await stop.wait()
        await server.stop(_SHUTDOWN_GRACE)
    finally:
        await database.close()


async def migrate(settings: Settings) -> None:
    await create_database_if_missing(settings.database_url)
    applied = await apply_migrations(settings.database_url)
    logger.info("Schema is up to date (%d migrations applied now)", len(applied))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=("serve", "migrate"), default="serve")
    arguments = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"nas-snapshots: invalid setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.metrics_address and arguments.command == "serve":
        serve_metrics(settings.metrics_address)

    try:
        asyncio.run(serve(settings) if arguments.command == "serve" else migrate(settings))
    except (OSError, TimeoutError) as exc:
        logger.error("Cannot reach a dependency: %s. Is PostgreSQL running at NAS_DATABASE_URL?", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
