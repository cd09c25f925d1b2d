"""Btrfs storage driver: file systems as btrfs subvolumes, snapshots as read-only btrfs snapshots.

Layout under the data root, which must be on a mounted btrfs file system:

    file-systems/<file_system_id>/              subvolume with the file system's data
    snapshots/<file_system_id>/<snapshot_id>/   read-only snapshot of that subvolume

Consistency. The kernel creates a snapshot during a transaction commit,
while no other change to the file system's trees can run, and links it
under its name in the same commit. So a snapshot appears under its final
name complete or not at all, and writing into it fails with EROFS. Before
the commit the kernel writes out the source subvolume's dirty data, so
every write that returned before the snapshot started is in it. Writes
that run during that write-out are captured file by file, which makes the
snapshot crash-consistent: writes that the writer made durable (fsync,
O_SYNC, O_DSYNC) keep their order across files, and buffered writes may
not, as after a power loss. The local driver copies one file after
another, so across files it keeps no order while the file system is written to.

NOTE: btrfs snapshots do not descend into nested subvolumes. A subvolume
made inside a file system's subvolume shows up in its snapshots as an
empty directory.

Tools. The driver runs the `btrfs` command of btrfs-progs as an asyncio
subprocess, with a timeout and without a shell, instead of calling the
ioctls through ctypes. The btrfs developers maintain btrfs-progs with the
kernel code, operators inspect and repair the driver's work with the same
commands, and an ioctl structure declared by hand can go wrong without an
error if its layout is off. The cost is one short process per operation.

Size. `size_bytes` is the sum of st_size over the snapshot's regular
files, found by walking the snapshot in a thread after it is created.
This is what the local driver reports, except that a file with several
hard links counts once, as the snapshot stores it once. Because the
snapshot is read-only the sum is exact. The walk costs one stat per file
and directory, so its time grows with the number of files. The
alternatives were rejected: `btrfs qgroup show` returns sizes at once,
but it needs quotas enabled on the whole file system, which btrfs-quota(8)
warns slows all extent processing. `btrfs filesystem du -s` also walks
every file, and it counts extents on disk, which leaves out small files
stored inline in the metadata.

Privileges. Creating a subvolume needs write permission on its parent
directory, and the kernel lets a process snapshot only subvolumes it
owns. Deleting a subvolume needs CAP_SYS_ADMIN or the
`user_subvol_rm_allowed` mount option. Even with that option, the kernel
rejects deleting a read-only snapshot (EROFS) for a process without
CAP_SYS_ADMIN, so such a worker clears the snapshot's read-only flag just
before deleting it. The constructor raises DriverUnavailable when the
worker has neither CAP_SYS_ADMIN nor the mount option.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import pathlib
import shlex
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Sequence

from worker.drivers.base import (
    FILE_SYSTEMS_DIR,
    SNAPSHOTS_DIR,
    TOP_DIRECTORY_MODE,
    DriverError,
    DriverUnavailable,
    FileSystemMissing,
    ProgressCallback,
    SnapshotCancelled,
    SnapshotResult,
    StorageDriver,
    StoredSnapshot,
    require_file_system_id,
    scan_snapshot_directories,
    require_snapshot_id,
)

__all__ = ["BTRFS_SUPER_MAGIC", "BtrfsDriver"]

logger = logging.getLogger(__name__)

# statfs f_type of btrfs, from linux/magic.h.
BTRFS_SUPER_MAGIC = 0x9123683E

# Inode number of the root directory of every btrfs subvolume
# (BTRFS_FIRST_FREE_OBJECTID). No other directory has it, and btrfs-progs
# and libbtrfsutil tell subvolumes apart by this number.
_SUBVOLUME_ROOT_INODE = 256

# Bit of CAP_SYS_ADMIN in the capability masks of /proc/self/status (linux/capability.h).
_CAP_SYS_ADMIN = 21

# Seconds for the start-up checks that run `stat` and `findmnt`. A data root
# on a hung network mount would otherwise block the worker's start for ever.
_HOST_CHECK_TIMEOUT = 10.0

# Seconds to wait for a killed btrfs command to exit. A command inside an
# ioctl exits only when the ioctl returns.
_KILL_WAIT_SECONDS = 5.0

# Entries the size walk visits between two checks of the cancel events.
_CANCEL_CHECK_ENTRIES = 512


class _PathKind(enum.Enum):
    MISSING = "missing"
    SUBVOLUME = "subvolume"
    OTHER = "other"


class _WalkStopped(Exception):
    """The size walk saw a stop event."""


class BtrfsDriver(StorageDriver):
    """Storage driver that keeps file systems as btrfs subvolumes and snapshots as read-only snapshots.

    The constructor checks that `data_root` is a directory on btrfs and that
    the `btrfs` command exists, and raises DriverUnavailable otherwise.
    """

    name = "btrfs"

    # NOTE: both timeouts are estimates, not measurements on production disks.
    # Maximum seconds for `btrfs subvolume snapshot`. It first writes out
    # the subvolume's dirty data, which can take minutes on a slow disk with
    # a large page cache.
    snapshot_timeout_seconds: float = 600.0
    # Maximum seconds for the other btrfs commands, which change only metadata.
    command_timeout_seconds: float = 60.0

    def __init__(self, data_root: pathlib.Path, *, btrfs_command: str = "btrfs") -> None:
        self.data_root = pathlib.Path(data_root)
        _require_btrfs_directory(self.data_root)

        btrfs = shutil.which(btrfs_command)
        if btrfs is None:
            raise DriverUnavailable(
                f"the {btrfs_command!r} command was not found on PATH; the btrfs driver needs btrfs-progs "
                "(apt-get install btrfs-progs)"
            )
        self._btrfs = btrfs

        # Without CAP_SYS_ADMIN the kernel deletes subvolumes only under
        # user_subvol_rm_allowed, and never read-only ones.
        self._clear_read_only_before_delete = not _has_cap_sys_admin()
        if self._clear_read_only_before_delete:
            _require_user_subvolume_removal(self.data_root)

        logger.info(
            "btrfs driver: data root %s, btrfs command %s, %s",
            self.data_root,
            self._btrfs,
            "clearing the read-only flag before deleting snapshots (no CAP_SYS_ADMIN)"
            if self._clear_read_only_before_delete
            else "deleting snapshots with CAP_SYS_ADMIN",
        )

    # Paths. Each of these validates the ids it is given before building a path.

    def _file_system_path(self, file_system_id: str) -> pathlib.Path:
        require_file_system_id(file_system_id)
        return self.data_root / FILE_SYSTEMS_DIR / file_system_id

    def _snapshot_path(self, file_system_id: str, snapshot_id: str) -> pathlib.Path:
        require_file_system_id(file_system_id)
        require_snapshot_id(snapshot_id)
        return self.data_root / SNAPSHOTS_DIR / file_system_id / snapshot_id

    # StorageDriver methods.

    async def provision_file_system(self, file_system_id: str) -> None:
        path = self._file_system_path(file_system_id)
        action = f"could not provision file system {file_system_id}"
        kind = await self._path_kind(path, action)
        if kind is _PathKind.OTHER:
            raise DriverError(
                f"{action}: {path} exists but is not a btrfs subvolume; move its data into a subvolume or remove it"
            )

        if kind is _PathKind.MISSING:
            try:
                await asyncio.to_thread(_ensure_directory, path.parent)
            except OSError as exc:
                raise DriverError(f"{action} at {path}: {exc}") from exc
            try:
                await self._run_btrfs(["subvolume", "create", str(path)], action)
            except DriverError as exc:
                # Another worker may have provisioned it at the same time.
                if await self._path_kind(path, action) is not _PathKind.SUBVOLUME:
                    raise
                logger.info("file system %s: subvolume %s appeared while creating it (%s)", file_system_id, path, exc)

        logger.info("file system %s: subvolume %s is ready", file_system_id, path)

    async def file_system_exists(self, file_system_id: str) -> bool:
        path = self._file_system_path(file_system_id)
        kind = await self._path_kind(path, f"could not check file system {file_system_id}")
        return kind is _PathKind.SUBVOLUME

    async def snapshot_exists(self, file_system_id: str, snapshot_id: str) -> bool:
        path = self._snapshot_path(file_system_id, snapshot_id)
        kind = await self._path_kind(path, f"could not check snapshot {snapshot_id} of file system {file_system_id}")
        return kind is _PathKind.SUBVOLUME

    async def create_snapshot(
        self,
        file_system_id: str,
        snapshot_id: str,
        on_progress: ProgressCallback,
        cancel: threading.Event,
    ) -> SnapshotResult:
        """Take a read-only snapshot of the file system's subvolume and measure its size.

        The snapshot ioctl cannot be interrupted, so `cancel` is checked
        before it and during the size walk after it. A snapshot that this
        call made is deleted when the call fails or is cancelled through
        `cancel`. After asyncio cancellation it stays, for the next attempt.
        """
        source = self._file_system_path(file_system_id)
        final = self._snapshot_path(file_system_id, snapshot_id)
        if cancel.is_set():
            raise SnapshotCancelled(f"snapshot {snapshot_id} of file system {file_system_id} was cancelled")

        existing = await self._path_kind(
            final, f"could not check snapshot {snapshot_id} of file system {file_system_id}"
        )
        if existing is not _PathKind.MISSING:
            return await self._existing_snapshot_result(file_system_id, snapshot_id, final, existing, cancel)

        await self._check_source(file_system_id, snapshot_id, source)
        try:
            await asyncio.to_thread(_ensure_directory, final.parent)
        except OSError as exc:
            raise DriverError(
                f"could not prepare snapshot {snapshot_id} of file system {file_system_id} in {final.parent}: {exc}"
            ) from exc

        started = time.monotonic()
        try:
            await self._run_btrfs(
                ["subvolume", "snapshot", "-r", str(source), str(final)],
                f"could not create snapshot {snapshot_id} of file system {file_system_id}",
                timeout=self.snapshot_timeout_seconds,
            )
            logger.info(
                "snapshot %s of file system %s: created read-only snapshot %s in %.2f s",
                snapshot_id,
                file_system_id,
                final,
                time.monotonic() - started,
            )
            # NOTE: no progress is reported, so DescribeSnapshots shows 0 % until
            # the size walk ends, which takes long on file systems with many files.
            size = await self._measure(file_system_id, snapshot_id, final, cancel)
        except DriverError:
            # A failed or cancelled snapshot keeps no data. A command that
            # timed out and is still inside the ioctl can make the snapshot
            # after this, and deleting the failed snapshot removes it then.
            await self._discard_snapshot(file_system_id, snapshot_id, final)
            raise

        logger.info(
            "snapshot %s of file system %s: %s bytes in regular files, done in %.2f s",
            snapshot_id,
            file_system_id,
            size,
            time.monotonic() - started,
        )
        return SnapshotResult(size_bytes=size)

    async def delete_snapshot(self, file_system_id: str, snapshot_id: str) -> None:
        path = self._snapshot_path(file_system_id, snapshot_id)
        deleted = await self._delete_subvolume(
            path, f"could not delete snapshot {snapshot_id} of file system {file_system_id}", read_only=True
        )
        if deleted:
            logger.info("snapshot %s of file system %s: deleted %s", snapshot_id, file_system_id, path)
        else:
            logger.debug("snapshot %s of file system %s: already deleted", snapshot_id, file_system_id)

    async def list_snapshots(self) -> list[StoredSnapshot]:
        # A btrfs snapshot appears whole, so every entry is complete.
        return await asyncio.to_thread(scan_snapshot_directories, self.data_root / SNAPSHOTS_DIR)

    async def release_file_system(self, file_system_id: str) -> None:
        path = self._file_system_path(file_system_id)
        deleted = await self._delete_subvolume(
            path, f"could not release file system {file_system_id}", read_only=False
        )
        if deleted:
            logger.info("file system %s: deleted subvolume %s", file_system_id, path)
        else:
            logger.debug("file system %s: subvolume already deleted", file_system_id)

    # Steps of the methods above.

    async def _existing_snapshot_result(
        self,
        file_system_id: str,
        snapshot_id: str,
        path: pathlib.Path,
        kind: _PathKind,
        cancel: threading.Event,
    ) -> SnapshotResult:
        """Return the size of the complete snapshot at `path` that an earlier attempt made."""
        if kind is not _PathKind.SUBVOLUME:
            raise DriverError(
                f"snapshot {snapshot_id} of file system {file_system_id}: {path} exists but is not a btrfs "
                "subvolume, so the btrfs driver did not make it; remove it by hand"
            )
        output = await self._run_btrfs(
            ["property", "get", "-ts", str(path), "ro"],
            f"could not check snapshot {snapshot_id} of file system {file_system_id}",
        )
        if output.strip() != "ro=true":
            raise DriverError(
                f"snapshot {snapshot_id} of file system {file_system_id}: {path} is a writable subvolume, "
                f"so the btrfs driver did not make it; remove it with `btrfs subvolume delete {path}`"
            )

        size = await self._measure(file_system_id, snapshot_id, path, cancel)
        logger.info(
            "snapshot %s of file system %s: already complete with %s bytes, not snapshotting again",
            snapshot_id,
            file_system_id,
            size,
        )
        return SnapshotResult(size_bytes=size)

    async def _check_source(self, file_system_id: str, snapshot_id: str, source: pathlib.Path) -> None:
        kind = await self._path_kind(
            source, f"cannot create snapshot {snapshot_id}: could not check file system {file_system_id}"
        )
        if kind is _PathKind.MISSING:
            raise FileSystemMissing(
                f"cannot create snapshot {snapshot_id}: file system {file_system_id} has no subvolume at {source}; "
                "provision the file system first"
            )
        if kind is _PathKind.OTHER:
            raise DriverError(
                f"cannot create snapshot {snapshot_id}: the data path {source} of file system {file_system_id} "
                "is not a btrfs subvolume"
            )

    async def _measure(
        self, file_system_id: str, snapshot_id: str, path: pathlib.Path, cancel: threading.Event
    ) -> int:
        """Return the snapshot's size_bytes, walking it in a thread that stops when `cancel` is set."""
        # asyncio cannot stop the thread, so this event makes the walk stop
        # at its next check when the caller is cancelled.
        abandoned = threading.Event()
        try:
            return await asyncio.to_thread(_regular_file_bytes, str(path), (cancel, abandoned))
        except _WalkStopped:
            raise SnapshotCancelled(
                f"snapshot {snapshot_id} of file system {file_system_id} was cancelled while it was measured"
            ) from None
        except OSError as exc:
            raise DriverError(
                f"could not measure snapshot {snapshot_id} of file system {file_system_id} at {path}: {exc}"
            ) from exc
        except asyncio.CancelledError:
            abandoned.set()
            raise

    async def _discard_snapshot(self, file_system_id: str, snapshot_id: str, path: pathlib.Path) -> None:
        try:
            deleted = await self._delete_subvolume(
                path, f"could not discard snapshot {snapshot_id} of file system {file_system_id}", read_only=True
            )
        except DriverError as exc:
            # The caller raises the original error, and deleting the
            # snapshot later removes this leftover.
            logger.warning("snapshot %s of file system %s: %s", snapshot_id, file_system_id, exc)
            return
        if deleted:
            logger.info("snapshot %s of file system %s: discarded %s", snapshot_id, file_system_id, path)

    async def _delete_subvolume(self, path: pathlib.Path, action: str, *, read_only: bool) -> bool:
        """Delete the subvolume at `path`, and return False if nothing was there.

        `action` starts the error message.
        """
        kind = await self._path_kind(path, action)
        if kind is _PathKind.MISSING:
            return False
        if kind is _PathKind.OTHER:
            raise DriverError(f"{action}: {path} is not a btrfs subvolume, so the btrfs driver did not make it")

        try:
            if read_only and self._clear_read_only_before_delete:
                await self._run_btrfs(["property", "set", "-ts", str(path), "ro", "false"], action)
            await self._run_btrfs(["subvolume", "delete", str(path)], action)
        except DriverError as exc:
            # A concurrent delete of the same subvolume makes ours fail.
            if await self._path_kind(path, action) is not _PathKind.MISSING:
                raise
            logger.debug("%s was deleted by another process while deleting it (%s)", path, exc)
            return False
        return True

    async def _path_kind(self, path: pathlib.Path, action: str) -> _PathKind:
        try:
            return await asyncio.to_thread(_kind_of_path, path)
        except OSError as exc:
            raise DriverError(f"{action} at {path}: {exc}") from exc

    async def _run_btrfs(self, arguments: Sequence[str], action: str, *, timeout: float | None = None) -> str:
        """Run the btrfs command with `arguments` and return its standard output.

        Raises DriverError, starting with `action`, when the command exits
        with an error or runs longer than `timeout` seconds (by default
        `command_timeout_seconds`).
        """
        limit = self.command_timeout_seconds if timeout is None else timeout
        command = [self._btrfs, *arguments]
        logger.debug("running %s", shlex.join(command))
        try:
            process = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise DriverError(f"{action}: could not run {shlex.join(command)}: {exc}") from exc

        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), limit)
        except TimeoutError:
            await _kill(process, command)
            raise DriverError(f"{action}: {shlex.join(command)} timed out after {limit:.0f} s") from None
        except asyncio.CancelledError:
            await _kill(process, command)
            raise

        if process.returncode != 0:
            detail = "; ".join(line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip())
            raise DriverError(
                f"{action}: {shlex.join(command)} failed with exit status {process.returncode}: "
                f"{detail or 'no error output'}"
            )
        return stdout.decode(errors="replace")


async def _kill(process: asyncio.subprocess.Process, command: Sequence[str]) -> None:
    if process.returncode is not None:
        return
    process.kill()
    try:
        await asyncio.wait_for(process.wait(), _KILL_WAIT_SECONDS)
    except TimeoutError:
        logger.warning(
            "%s (pid %s) did not exit within %.0f s of SIGKILL, probably because it is inside an ioctl; "
            "it exits when the ioctl returns",
            shlex.join(command),
            process.pid,
            _KILL_WAIT_SECONDS,
        )


# Host checks, run once by the constructor.


def _require_btrfs_directory(data_root: pathlib.Path) -> None:
    if not data_root.is_dir():
        raise DriverUnavailable(
            f"NAS_DATA_ROOT={data_root} does not exist or is not a directory; the btrfs driver needs a "
            "directory on a mounted btrfs file system"
        )

    # os.statvfs has no f_type, so coreutils stat reads it: %t is the
    # type's magic number in hex and %T its name.
    output = _run_host_check(
        ["stat", "--file-system", "--format=%t %T", "--", str(data_root)],
        f"could not read the file system type of NAS_DATA_ROOT={data_root}",
    )
    magic, _, type_name = output.strip().partition(" ")
    if magic != f"{BTRFS_SUPER_MAGIC:x}":
        raise DriverUnavailable(
            f"NAS_DATA_ROOT={data_root} is on a {type_name or magic} file system, not btrfs; mount a btrfs "
            "file system there, point NAS_DATA_ROOT at a directory on one, or set NAS_DRIVER=local"
        )


def _require_user_subvolume_removal(data_root: pathlib.Path) -> None:
    output = _run_host_check(
        ["findmnt", "--noheadings", "--output", "OPTIONS", "--target", str(data_root)],
        f"could not read the mount options of NAS_DATA_ROOT={data_root}",
    )
    if "user_subvol_rm_allowed" not in output.strip().split(","):
        raise DriverUnavailable(
            f"the worker cannot delete snapshots under NAS_DATA_ROOT={data_root}: it runs without "
            "CAP_SYS_ADMIN and the btrfs file system is mounted without the user_subvol_rm_allowed option; "
            "add that mount option or run the worker with CAP_SYS_ADMIN"
        )


def _run_host_check(command: Sequence[str], action: str) -> str:
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=_HOST_CHECK_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DriverUnavailable(f"{action}: {exc}") from exc
    if result.returncode != 0:
        raise DriverUnavailable(f"{action}: {shlex.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


def _has_cap_sys_admin() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


# Blocking helpers, run in a worker thread.


def _ensure_directory(path: pathlib.Path) -> None:
    """Create `path` and its missing parents with mode 0755, whatever the umask."""
    if path.is_dir():
        return
    _ensure_directory(path.parent)
    try:
        path.mkdir(mode=TOP_DIRECTORY_MODE)
    except FileExistsError:
        return
    path.chmod(TOP_DIRECTORY_MODE)


def _kind_of_path(path: pathlib.Path) -> _PathKind:
    """Tell whether `path` is missing, a subvolume root, or something else, without following a symbolic link."""
    try:
        path_stat = os.lstat(path)
    except FileNotFoundError:
        return _PathKind.MISSING
    if stat.S_ISDIR(path_stat.st_mode) and path_stat.st_ino == _SUBVOLUME_ROOT_INODE:
        return _PathKind.SUBVOLUME
    return _PathKind.OTHER


def _regular_file_bytes(root: str, stop_events: Sequence[threading.Event]) -> int:
    """Sum st_size over the regular files under `root`, counting each inode once.

    Symbolic links are not followed, and directories on another device,
    such as nested subvolumes, are not entered. Raises _WalkStopped when
    one of `stop_events` is set.
    """
    root_device = os.lstat(root).st_dev
    linked_inodes: set[int] = set()
    total = 0
    visited = 0
    pending = [root]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                visited += 1
                if visited % _CANCEL_CHECK_ENTRIES == 0 and any(event.is_set() for event in stop_events):
                    raise _WalkStopped
                if entry.is_dir(follow_symlinks=False):
                    if entry.stat(follow_symlinks=False).st_dev == root_device:
                        pending.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    entry_stat = entry.stat(follow_symlinks=False)
                    if entry_stat.st_nlink > 1:
                        if entry_stat.st_ino in linked_inodes:
                            continue
                        linked_inodes.add(entry_stat.st_ino)
                    total += entry_stat.st_size
        if any(event.is_set() for event in stop_events):
            raise _WalkStopped
    return total
