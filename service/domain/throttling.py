"""Per-account limits on CreateSnapshot calls, the same across every API replica.

NAS allows 120 CreateSnapshot calls per account in 60 seconds. The count
lives in PostgreSQL, in fixed windows, so it holds however many replicas
serve the account. A call over the limit is RESOURCE_EXHAUSTED
`Throttling.User`, with a RetryInfo naming the seconds until the window
ends.

NOTE: fixed windows let an account make up to twice the limit in the
seconds around a window boundary; a sliding window would not.
"""

from __future__ import annotations

import random

from service.errors import Throttled
from service.store import request_counts
from service.store.database import Database

__all__ = ["Throttle"]

# One call in this many also removes windows older than an hour.
_PURGE_ONE_IN = 1000


class Throttle:
    def __init__(self, database: Database, limit: int, window_seconds: int) -> None:
        self._database = database
        self._limit = limit
        self._window = window_seconds

    async def admit(self, account: str) -> None:
        """Count a call for `account`, raising Throttled when it is over the limit."""
        async with self._database.transaction() as connection:
            calls, seconds_left = await request_counts.count_call(connection, account, self._window)
            if random.randrange(_PURGE_ONE_IN) == 0:
                await request_counts.purge_before(connection, 3600 + self._window)
        if calls > self._limit:
            raise Throttled(account, self._limit, self._window, seconds_left)
