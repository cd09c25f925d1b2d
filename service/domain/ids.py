"""Identifier formats: file systems, snapshots and requests.

These patterns are the only gate between a caller's string and a file
path, so every id is checked with them before it is used anywhere.
"""

from __future__ import annotations

import re
import secrets
import string
import uuid

__all__ = [
    "FILE_SYSTEM_ID",
    "SNAPSHOT_ID",
    "is_file_system_id",
    "is_snapshot_id",
    "new_request_id",
    "new_snapshot_id",
]

# 1 to 64 ASCII letters, digits and hyphens, starting with a letter or digit:
# "extreme-01ddddfc", "1ca404a348", "cpfs-00cb6fa094ca1234". re.ASCII keeps
# \Z from matching before a trailing newline and letters to ASCII.
FILE_SYSTEM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}\Z", re.ASCII)

_SNAPSHOT_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
_SNAPSHOT_SUFFIX_LENGTH = 17
SNAPSHOT_ID_PREFIX = "s-extreme-"
SNAPSHOT_ID = re.compile(r"s-extreme-[a-z0-9]{17}\Z", re.ASCII)


def is_file_system_id(value: str) -> bool:
    return FILE_SYSTEM_ID.match(value) is not None


def is_snapshot_id(value: str) -> bool:
    return SNAPSHOT_ID.match(value) is not None


def new_snapshot_id() -> str:
    """Return a snapshot id: "s-extreme-" and 17 random lowercase letters and digits."""
    suffix = "".join(secrets.choice(_SNAPSHOT_SUFFIX_ALPHABET) for _ in range(_SNAPSHOT_SUFFIX_LENGTH))
    return SNAPSHOT_ID_PREFIX + suffix


def new_request_id() -> str:
    """Return a request id, an uppercase UUID such as 473469C7-AA6F-4DC5-B3DB-A3DC0DE3C83E."""
    return str(uuid.uuid4()).upper()
