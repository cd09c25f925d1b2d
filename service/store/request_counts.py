"""SQL for per-account call counts in fixed windows, shared by every API replica."""

from __future__ import annotations

import asyncpg

__all__ = ["count_call", "purge_before"]


async def count_call(connection: asyncpg.Connection, account: str, window_seconds: int) -> tuple[int, int]:
    """Count one call in the account's current window; return the calls so far and the seconds left.

    Windows start at multiples of `window_seconds` since the Unix epoch, by
    the database clock, so every replica counts into the same window.
    """
    row = await connection.fetchrow(
        """
        WITH window_bounds AS (
            SELECT to_timestamp(floor(extract(epoch FROM now()) / $2) * $2) AS start
        )
        INSERT INTO request_counts AS counts (account, window_start, calls)
        SELECT $1, start, 1 FROM window_bounds
        ON CONFLICT (account, window_start) DO UPDATE SET calls = counts.calls + 1
        RETURNING calls, ceil(extract(epoch FROM window_start + make_interval(secs => $2) - now()))::int AS left
        """,
        account,
        window_seconds,
    )
    return row["calls"], max(1, row["left"])


async def purge_before(connection: asyncpg.Connection, seconds_ago: int) -> None:
    await connection.execute(
        "DELETE FROM request_counts WHERE window_start < now() - make_interval(secs => $1)", seconds_ago
    )
