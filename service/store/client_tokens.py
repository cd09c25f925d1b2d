"""SQL for client tokens, which make CreateSnapshot retries safe."""

from __future__ import annotations

import dataclasses

import asyncpg

__all__ = ["ClientToken", "find", "insert"]


@dataclasses.dataclass(frozen=True)
class ClientToken:
    snapshot_id: str
    fingerprint: str


async def find(connection: asyncpg.Connection, file_system_id: str, client_token: str) -> ClientToken | None:
    row = await connection.fetchrow(
        "SELECT snapshot_id, fingerprint FROM client_tokens WHERE file_system_id = $1 AND client_token = $2",
        file_system_id,
        client_token,
    )
    return ClientToken(row["snapshot_id"], row["fingerprint"]) if row else None


async def insert(
    connection: asyncpg.Connection, file_system_id: str, client_token: str, snapshot_id: str, fingerprint: str
) -> None:
    # NOTE: tokens are never purged yet; the API promises to keep them at
    # least 24 hours, and keeping them longer only costs table space.
    await connection.execute(
        """
        INSERT INTO client_tokens (file_system_id, client_token, snapshot_id, fingerprint)
        VALUES ($1, $2, $3, $4)
        """,
        file_system_id,
        client_token,
        snapshot_id,
        fingerprint,
    )
