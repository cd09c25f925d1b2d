"""SQL for the per-account call counts that throttling keeps.

The admission function `nas_admit_snapshot` counts each CreateSnapshot
call in its account's window; this module only removes old windows.
"""

from __future__ import annotations

import asyncpg

__all__ = ["purge_before"]


async def purge_before(connection: asyncpg.Connection, seconds_ago: int) -> None:
    await connection.execute(
        "DELETE FROM request_counts WHERE window_start < now() - make_interval(secs => $1)", seconds_ago
    )
