"""The storage driver interface: the operations the worker runs on the data plane.

A driver keeps file systems and their snapshots under one data root. The
worker calls it from asyncio code, so every method is a coroutine. A
driver that does blocking I/O runs it in a thread or a subprocess.

Construction. `worker.drivers.create_driver` builds the driver named by
NAS_DRIVER when the worker starts. A driver that cannot work on this host,
for example because the data root is on the wrong kind of file system,
raises `DriverUnavailable` from its constructor, and the worker exits with
that message.

Ids. Ids reach a driver only after `service.domain.ids` validated them,
and every method checks them again with `require_file_system_id` and
`require_snapshot_id` before it builds a path. An invalid id raises
ValueError before any I/O.

The control plane relies on these guarantees:

- `create_snapshot` is idempotent by snapshot id. A redelivered message
  finds the finished snapshot and returns its size instead of making a
  second one, and leftovers of an interrupted attempt are discarded
  before a new one starts. A snapshot becomes visible under its id only
  once it is complete.
- `delete_snapshot` and `release_file_system` treat data that is already
  gone as deleted, so a repeated message is harmless.
- `SnapshotResult.size_bytes` is the logical size of the file data that
  the snapshot holds: the sum of `st_size` over its regular files, as
  `ls -l` shows them. It is not the disk space the snapshot uses, which
  copy-on-write sharing makes hard to assign to one snapshot.
  DescribeSnapshots shows it as the snapshot's size.

What a driver may assume:

- The worker calls `create_snapshot` for a snapshot id only while it
  holds the lease on the snapshot's row, so two calls for one id do not
  overlap. The exception is a worker that stalls past its lease expiry:
  it can still be inside the driver when another worker claims the
  snapshot, until its next heartbeat (about one second) sets `cancel`.
- `cancel` is a threading.Event that the worker sets when it loses the
  lease, because the snapshot was deleted or another worker took it over.
  The driver checks it between steps, stops within about a second,
  removes what this call made and raises SnapshotCancelled.
- asyncio cancellation of `create_snapshot` means the worker is shutting
  down and hands the message back to the broker. The driver stops its
  work but may keep a complete snapshot, which the next attempt finds.

Errors raised by a driver:

    DriverError
    ├── DriverUnavailable   the driver cannot run on this host (constructor only)
    ├── FileSystemMissing   the file system's data does not exist
    └── SnapshotCancelled   the cancel event was set while the snapshot was made
"""

from __future__ import annotations

import abc
import dataclasses
import pathlib
import threading
from collections.abc import Callable

from service.domain.ids import is_file_system_id, is_snapshot_id

__all__ = [
    "FILE_SYSTEMS_DIR",
    "SNAPSHOTS_DIR",
    "TOP_DIRECTORY_MODE",
    "DriverError",
    "DriverUnavailable",
    "FileSystemMissing",
    "Progress",
    "ProgressCallback",
    "SnapshotCancelled",
    "SnapshotResult",
    "StorageDriver",
    "StoredSnapshot",
    "require_file_system_id",
    "require_snapshot_id",
    "scan_snapshot_directories",
]

# Layout under the data root, shared by every driver:
# file-systems/<file system id> and snapshots/<file system id>/<snapshot id>.
FILE_SYSTEMS_DIR = "file-systems"
SNAPSHOTS_DIR = "snapshots"
TOP_DIRECTORY_MODE = 0o755


class DriverError(Exception):
    """A storage operation failed; the message is shown to operators."""


class DriverUnavailable(DriverError):
    """The driver cannot run on this host. The message names the setting or tool to fix."""


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


# Called from the driver's thread, so it must be thread-safe and quick. A
# driver whose snapshots take no measurable time may never call it.
ProgressCallback = Callable[[Progress], None]


@dataclasses.dataclass(frozen=True)
class SnapshotResult:
    # Logical bytes of file data the snapshot holds; see the module docstring.
    size_bytes: int


@dataclasses.dataclass(frozen=True)
class StoredSnapshot:
    """Snapshot data found in storage, for the reconciler to compare with the rows."""

    file_system_id: str
    snapshot_id: str
    # False for the leftover of an interrupted creation.
    complete: bool
    # Last change of the data's top directory, in seconds since the epoch.
    modified_at: float


class StorageDriver(abc.ABC):
    """A data plane that keeps file systems and snapshots."""

    # The NAS_DRIVER value that selects this driver.
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
        """Capture the file system's data as snapshot `snapshot_id`.

        Raises FileSystemMissing if the file system has no data, which
        fails the snapshot at once, and SnapshotCancelled once `cancel` is
        set. Other DriverErrors are retried, and the snapshot is marked
        failed with the last message once the worker's attempts run out.
        """

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
    async def list_snapshots(self) -> list[StoredSnapshot]:
        """List every snapshot's data in storage, complete or not."""

    @abc.abstractmethod
    async def file_system_exists(self, file_system_id: str) -> bool:
        """Tell whether the file system's storage exists."""


def require_file_system_id(value: str) -> None:
    """Raise ValueError unless `value` is a valid file system id, which is safe as one path component."""
    if not isinstance(value, str) or not is_file_system_id(value):
        raise ValueError(
            f"invalid file system id {value!r}: expected 1 to 64 ASCII letters, digits and hyphens, "
            "starting with a letter or digit"
        )


def require_snapshot_id(value: str) -> None:
    """Raise ValueError unless `value` is a valid snapshot id, which is safe as one path component."""
    if not isinstance(value, str) or not is_snapshot_id(value):
        raise ValueError(f"invalid snapshot id {value!r}: expected 's-extreme-' and 17 lowercase letters and digits")


def scan_snapshot_directories(snapshots_root: pathlib.Path) -> list[StoredSnapshot]:
    """List `<root>/<file system id>/<snapshot id>` entries, and `.<snapshot id>.partial` ones as incomplete.

    Names that are not valid ids are skipped: they are nothing a driver
    made, so nothing the reconciler may remove. Blocking; run it in a thread.
    """
    found: list[StoredSnapshot] = []
    if not snapshots_root.is_dir():
        return found
    for file_system_dir in snapshots_root.iterdir():
        if not is_file_system_id(file_system_dir.name) or not file_system_dir.is_dir():
            continue
        for entry in file_system_dir.iterdir():
            name, complete = entry.name, True
            if name.startswith(".") and name.endswith(".partial"):
                name, complete = name[1 : -len(".partial")], False
            if not is_snapshot_id(name):
                continue
            try:
                modified_at = entry.lstat().st_mtime
            except FileNotFoundError:
                continue
            found.append(StoredSnapshot(file_system_dir.name, name, complete, modified_at))
    return found
