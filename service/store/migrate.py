"""Versioned schema migrations, safe to run from several replicas at once.

Migrations are the files `migrations/NNNN_name.sql`, applied in order,
each in its own transaction with its version recorded in
`schema_migrations`. A session advisory lock serialises concurrent
runners: the second replica waits, then finds nothing left to apply.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg

__all__ = ["apply_migrations", "create_database_if_missing"]

logger = logging.getLogger(__name__)

# Arbitrary constant, unique to this service, that names the advisory lock.
_MIGRATION_LOCK_KEY = 0x6E61_7331
_MIGRATION_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql\Z")


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files("service.store").joinpath("migrations").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found)


async def apply_migrations(database_url: str, timeout: float = 60.0) -> list[int]:
    """Bring the schema up to date and return the versions this call applied."""
    connection = await asyncpg.connect(database_url, timeout=timeout)
    try:
        # The session lock outlives each migration's transaction, so one
        # runner finishes all of its migrations before another looks.
        await connection.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY, timeout=timeout)
        try:
            await connection.execute(
                """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    integer PRIMARY KEY,
                    name       text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )
                """
            )
            applied_before = {row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")}

            applied_now = []
            for version, name, sql in _migrations():
                if version in applied_before:
                    continue
                async with connection.transaction():
                    await connection.execute(sql)
                    await connection.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                    )
                logger.info("Applied schema migration %04d_%s", version, name)
                applied_now.append(version)
            return applied_now
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
    finally:
        await connection.close()


async def create_database_if_missing(database_url: str, timeout: float = 30.0) -> bool:
    """Create the database named in the URL; return True if it was created.

    Connects to the server's `postgres` database to do so, with the same
    user, which needs the CREATEDB privilege.
    """
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    if not name:
        raise ValueError("The database URL names no database.")

    maintenance_url = urlunsplit(parts._replace(path="/postgres"))
    connection = await asyncpg.connect(maintenance_url, timeout=timeout)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await connection.execute(f"CREATE DATABASE {quoted}")
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            # Another replica created it between the check and the CREATE;
            # PostgreSQL reports that race as a catalog unique violation.
            return False
        logger.info("Created database %s", name)
        return True
    finally:
        await connection.close()
