"""SQL for client tokens, which the admission function writes and reads."""

from __future__ import annotations

import asyncpg

__all__ = ["purge_older_than"]


async def purge_older_than(connection: asyncpg.Connection, seconds: int) -> int:
    """Delete tokens older than `seconds`; return how many."""
    result = await connection.execute(
        "DELETE FROM client_tokens WHERE created_at < now() - make_interval(secs => $1)", seconds
    )
    return int(result.split()[-1])
