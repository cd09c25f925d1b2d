"""SQL for bearer tokens. Only a SHA-256 hash of each token's secret is stored."""

from __future__ import annotations

import dataclasses
import datetime

import asyncpg

__all__ = ["TokenRecord", "get", "insert", "list_all", "revoke"]


@dataclasses.dataclass(frozen=True)
class TokenRecord:
    token_id: str
    secret_hash: bytes
    account: str
    role: str
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None


_COLUMNS = "token_id, secret_hash, account, role, created_at, revoked_at"


async def insert(connection: asyncpg.Connection, token_id: str, secret_hash: bytes, account: str, role: str) -> None:
    await connection.execute(
        "INSERT INTO api_tokens (token_id, secret_hash, account, role) VALUES ($1, $2, $3, $4)",
        token_id,
        secret_hash,
        account,
        role,
    )


async def get(connection: asyncpg.Connection, token_id: str) -> TokenRecord | None:
    row = await connection.fetchrow(f"SELECT {_COLUMNS} FROM api_tokens WHERE token_id = $1", token_id)
    return TokenRecord(**dict(row)) if row else None


async def revoke(connection: asyncpg.Connection, token_id: str) -> bool:
    result = await connection.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE token_id = $1 AND revoked_at IS NULL", token_id
    )
    return result == "UPDATE 1"


async def list_all(connection: asyncpg.Connection) -> list[TokenRecord]:
    rows = await connection.fetch(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY created_at")
    return [TokenRecord(**dict(row)) for row in rows]
