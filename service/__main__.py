"""Run the gRPC API: `python -m service`, or one of its maintenance commands.

    python -m service                   serve the API until SIGTERM
    python -m service migrate           create the database if missing and apply migrations
    python -m service tokens create --account ACCOUNT [--admin]
    python -m service tokens list
    python -m service tokens revoke TOKEN_ID

`migrate` is the separate migration step of a deployment. Token changes
take effect at once on every API replica, without a restart, because the
API reads tokens from the database on each call.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from service.api.server import ApiServer
from service.domain import identity
from service.errors import NasError
from service.logs import configure_logging
from service.metrics import serve_metrics
from service.runtime import open_database, stop_on_signals
from service.settings import Settings, SettingsError
from service.store import tokens
from service.store.database import Database
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


async def manage_tokens(settings: Settings, arguments: argparse.Namespace) -> int:
    database = await Database.connect(settings.database_url, pool_size=1, timeout=settings.database_timeout)
    try:
        async with database.transaction() as connection:
            if arguments.action == "create":
                account = identity.check_account(arguments.account)
                role = "admin" if arguments.admin else "user"
                token_id, token = await identity.issue_token(connection, account, role)
                print(f"Created token {token_id} for account {account} with role {role}.")
                print("Store it now; it cannot be shown again:")
                print(token)
            elif arguments.action == "revoke":
                if not await tokens.revoke(connection, arguments.token_id):
                    print(f"No active token {arguments.token_id}.", file=sys.stderr)
                    return 1
                print(f"Revoked token {arguments.token_id}.")
            else:
                print("TOKEN_ID      ACCOUNT  ROLE  CREATED           STATE")
                for record in await tokens.list_all(connection):
                    state = f"revoked {record.revoked_at:%Y-%m-%d %H:%M}" if record.revoked_at else "active"
                    print(f"{record.token_id}  {record.account}  {record.role}  {record.created_at:%Y-%m-%d %H:%M}  {state}")
    finally:
        await database.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the API until SIGTERM (the default)")
    commands.add_parser("migrate", help="create the database if missing and apply migrations")
    token_parser = commands.add_parser("tokens", help="create, list or revoke bearer tokens")
    actions = token_parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a token and print it once")
    create.add_argument("--account", required=True, help="account the token acts for")
    create.add_argument("--admin", action="store_true", help="give the token the admin role")
    actions.add_parser("list", help="list tokens without their secrets")
    revoke = actions.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("token_id", help="the id part of the token, as listed")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    command = arguments.command or "serve"

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"nas-snapshots: invalid setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, settings.secrets)
    if settings.metrics_address and command == "serve":
        serve_metrics(settings.metrics_address)

    try:
        if command == "serve":
            asyncio.run(serve(settings))
        elif command == "migrate":
            asyncio.run(migrate(settings))
        else:
            return asyncio.run(manage_tokens(settings, arguments))
    except SettingsError as exc:
        logger.error("Invalid settings: %s", exc)
        return 2
    except NasError as exc:
        logger.error("%s", exc.message)
        return 1
    except (OSError, TimeoutError) as exc:
        logger.error("Cannot reach a dependency: %s. Is PostgreSQL running at NAS_DATABASE_URL?", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
