"""The storage driver contract: what the worker asks of the data plane.

A driver keeps file systems and their snapshots under one data root. The
worker calls it from asyncio code, so every method is a coroutine; a
driver that does blocking I/O runs it in a thread.

The control plane relies on these guarantees:

- `create_snapshot` is idempotent by snapshot id. A redelivered message
  finds the finished snapshot and returns its size instead of making a
  second copy, and leftovers of an interrupted attempt are discarded
  before a new one starts. A snapshot becomes visible under its id only
  once it is complete.
- `delete_snapshot` and `release_file_system` treat data that is already
  gone as deleted, so a repeated message is harmless.
- Ids reach a driver only after `service.domain.ids` validated them, and
  drivers check them again before building a path.

Errors raised by a driver:

    DriverError
    ├── FileSystemMissing   the file system's data does not exist
    └── SnapshotCancelled   the cancel event was set while copying
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from collections.abc import Callable

__all__ = [
    "DriverError",
    "FileSystemMissing",
    "Progress",
    "ProgressCallback",
    "SnapshotCancelled",
    "SnapshotResult",
    "StorageDriver",
]


class DriverError(Exception):
    """A storage operation failed; the message is shown to operators."""


class FileSystemMissing(DriverError):
    """The file system has no data under the data root."""


class SnapshotCancelled(DriverError):
    """The snapshot was cancelled while it was being created."""


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far a snapshot creation has come."""

    bytes_done: int
    bytes_total: int
    # Seconds left, estimated from the copy rate so far; None before any
    # rate is known.
    remain_seconds: int | None

    @property
    def percent(self) -> int:
        """Percent done, at most 99: only the recorded completion makes it 100."""
        if self.bytes_total <= 0:
            return 0
        return min(99, self.bytes_done * 100 // self.bytes_total)


# Called from the copying thread; it must be thread-safe and quick.
ProgressCallback = Callable[[Progress], None]


@dataclasses.dataclass(frozen=True)
class SnapshotResult:
    # Bytes of file data the snapshot holds.
    size_bytes: int


class StorageDriver(abc.ABC):
    """A data plane that keeps file systems and snapshots."""

    name: str

    @abc.abstractmethod
    async def provision_file_system(self, file_system_id: str) -> None:
        """Create the file system's storage if it does not exist yet."""

    @abc.abstractmethod
    async def create_snapshot(
        self,
        file_system_id: str,
        snapshot_id: str,
        on_progress: ProgressCallback,
        cancel: threading.Event,
    ) -> SnapshotResult:
        """Capture the file system's data as snapshot `snapshot_id`."""

    @abc.abstractmethod
    async def delete_snapshot(self, file_system_id: str, snapshot_id: str) -> None:
        """Remove a snapshot's data; a snapshot that is gone counts as deleted."""

    @abc.abstractmethod
    async def release_file_system(self, file_system_id: str) -> None:
        """Remove the file system's own data; its snapshots are deleted separately."""

    @abc.abstractmethod
    async def snapshot_exists(self, file_system_id: str, snapshot_id: str) -> bool:
        """Tell whether a complete snapshot with this id exists."""

    @abc.abstractmethod
    async def file_system_exists(self, file_system_id: str) -> bool:
        """Tell whether the file system's storage exists."""
