"""Per-account limits on CreateSnapshot calls, the same across every API replica.

NAS allows 120 CreateSnapshot calls per account in 60 seconds. The count
lives in PostgreSQL, in fixed windows that start at multiples of the
window length since the Unix epoch by the database clock, so it holds
however many replicas serve the account. The admission function counts
each call before its other checks. A call over the limit is
RESOURCE_EXHAUSTED `Throttling.User`, with a RetryInfo naming the
seconds until the window ends. Windows older than an hour are removed by
the worker's retention sweep.

NOTE: fixed windows let an account make up to twice the limit in the
seconds around a window boundary; a sliding window would not.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

__all__ = ["ThrottlePolicy"]


@dataclasses.dataclass(frozen=True)
class ThrottlePolicy:
    # Calls one account may make per window.
    limit: int
    window_seconds: int

    UNLIMITED: ClassVar[ThrottlePolicy]


ThrottlePolicy.UNLIMITED = ThrottlePolicy(limit=2**31 - 1, window_seconds=60)
