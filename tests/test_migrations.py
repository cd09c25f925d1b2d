"""Schema migrations applied by several replicas at once."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from service.store.migrate import _migrations, apply_migrations, create_database_if_missing
from tests.conftest import POSTGRES_URL


async def test_concurrent_runners_apply_once():
    name = f"nas_migrate_{uuid.uuid4().hex[:10]}"
    url = f"{POSTGRES_URL}/{name}"
    try:
        created = await asyncio.gather(*(create_database_if_missing(url) for _ in range(3)))
        applied = await asyncio.gather(*(apply_migrations(url) for _ in range(5)))
        again = await apply_migrations(url)

        connection = await asyncpg.connect(url)
        try:
            versions = [row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")]
        finally:
            await connection.close()
    finally:
        connection = await asyncpg.connect(f"{POSTGRES_URL}/postgres")
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()

    all_versions = [version for version, _, _ in _migrations()]
    assert created.count(True) == 1
    assert sorted(version for run in applied for version in run) == all_versions
    assert again == []
    assert sorted(versions) == all_versions
