"""Local storage driver: file systems and their snapshots as directories on one host.

A snapshot is a consistent copy only when nothing writes to the file system
while it is copied. Regular files are cloned with reflinks where the file
system supports them and copied byte by byte otherwise. Permission bits,
owners, times and symbolic links are kept, but extended attributes and ACLs are not.

NOTE: the copy keeps the permission bits of the source, so the local driver
cannot make a snapshot read-only without changing them. Nothing in the product
writes under snapshots/, and a copy-on-write driver is the way to truly
read-only snapshots.

Layout under the data root:

    file-systems/<file_system_id>/                      file system data
    snapshots/<file_system_id>/<snapshot_id>/           complete snapshots
    snapshots/<file_system_id>/.<snapshot_id>.partial/  a copy in progress
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import logging
import math
import os
import pathlib
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable, Sequence

from worker.drivers.base import (
    FILE_SYSTEMS_DIR,
    SNAPSHOTS_DIR,
    TOP_DIRECTORY_MODE,
    DriverError,
    FileSystemMissing,
    Progress,
    ProgressCallback,
    SnapshotCancelled,
    SnapshotResult,
    StorageDriver,
    StoredSnapshot,
    require_file_system_id,
    require_snapshot_id,
    scan_snapshot_directories,
)

__all__ = ["FICLONE", "LocalDriver"]

logger = logging.getLogger(__name__)

# ioctl request that clones a whole file as a reflink: _IOW(0x94, 9, int) in linux/fs.h.
FICLONE = 0x40049409

# Errors that mean "this way of copying does not work for these files",
# so the copy falls back to the next way instead of failing.
_COPY_UNSUPPORTED_ERRNOS = frozenset(
    {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF, errno.ENOSYS}
)
# Reflink errors that hold for the whole file system, so later files skip the attempt.
_REFLINK_UNSUPPORTED_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.EXDEV, errno.ENOTTY, errno.ENOSYS})

# Bytes per plain-copy step. Cancellation and progress are checked between steps.
_COPY_CHUNK_BYTES = 8 * 1024 * 1024

# Maximum number of skipped sockets and device files that get their own
# warning in one snapshot. Later ones are only counted.
_MAX_SKIP_WARNINGS = 10

_UTIME_ON_SYMLINKS = os.utime in os.supports_follow_symlinks
_CHOWN_ON_SYMLINKS = os.chown in os.supports_follow_symlinks

# Flags for opening a directory of either tree. O_NOFOLLOW makes the open
# fail instead of following a symbolic link in the directory's place.
_OPEN_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Flags for opening a source file. O_NONBLOCK keeps the open from hanging on
# a FIFO that took the file's place after the listing, and O_NOCTTY keeps a
# terminal from becoming the worker's controlling terminal. Neither changes
# how a regular file is read.
_OPEN_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Errors of an O_NOFOLLOW open that mean the entry is no longer the type the
# listing showed. ELOOP comes from a symbolic link, ENXIO from a socket, and
# ENOTDIR from a non-directory opened with O_DIRECTORY. Linux 6.18 returns
# ENOTDIR, not ELOOP, for a symbolic link opened with O_DIRECTORY | O_NOFOLLOW.
_REPLACED_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR, errno.ENXIO})


class LocalDriver(StorageDriver):
    """Storage driver that keeps file systems and snapshots as directories under `data_root`."""

    name = "local"

    # Minimum seconds between two progress reports while a snapshot is copied.
    progress_interval_seconds: float = 0.2

    def __init__(self, data_root: pathlib.Path, copy_bandwidth: int = 0) -> None:
        self.data_root = pathlib.Path(data_root)
        # Bytes per second a copy may read, so that snapshots leave I/O for
        # the file system's users; 0 means no limit.
        self.copy_bandwidth = copy_bandwidth

    # Paths. Each of these validates the ids it is given before building a path.

    def _file_system_dir(self, file_system_id: str) -> pathlib.Path:
        require_file_system_id(file_system_id)
        return self.data_root / FILE_SYSTEMS_DIR / file_system_id

    def _snapshot_dir(self, file_system_id: str, snapshot_id: str) -> pathlib.Path:
        require_file_system_id(file_system_id)
        require_snapshot_id(snapshot_id)
        return self.data_root / SNAPSHOTS_DIR / file_system_id / snapshot_id

    def _partial_dir(self, file_system_id: str, snapshot_id: str) -> pathlib.Path:
        require_file_system_id(file_system_id)
        require_snapshot_id(snapshot_id)
        return self.data_root / SNAPSHOTS_DIR / file_system_id / f".{snapshot_id}.partial"

    def _ensure_top_directory(self, name: str) -> pathlib.Path:
        self.data_root.mkdir(parents=True, exist_ok=True)
        path = self.data_root / name
        try:
            path.mkdir(mode=TOP_DIRECTORY_MODE)
        except FileExistsError:
            return path
        # mkdir applies the umask, so set the mode explicitly.
        path.chmod(TOP_DIRECTORY_MODE)
        return path

    # StorageDriver methods.

    async def provision_file_system(self, file_system_id: str) -> None:
        require_file_system_id(file_system_id)
        await asyncio.to_thread(self._provision_file_system, file_system_id)

    async def file_system_exists(self, file_system_id: str) -> bool:
        path = self._file_system_dir(file_system_id)
        try:
            return await asyncio.to_thread(_is_real_directory, path)
        except OSError as exc:
            raise DriverError(f"could not check file system {file_system_id} at {path}: {exc}") from exc

    async def snapshot_exists(self, file_system_id: str, snapshot_id: str) -> bool:
        path = self._snapshot_dir(file_system_id, snapshot_id)
        try:
            return await asyncio.to_thread(_is_real_directory, path)
        except OSError as exc:
            raise DriverError(
                f"could not check snapshot {snapshot_id} of file system {file_system_id} at {path}: {exc}"
            ) from exc

    async def create_snapshot(
        self,
        file_system_id: str,
        snapshot_id: str,
        on_progress: ProgressCallback,
        cancel: threading.Event,
    ) -> SnapshotResult:
        """Copy the file system's directory tree into the snapshot's directory.

        Two calls with the same snapshot id must not run at the same time,
        because each one discards the other's partial copy.
        """
        require_file_system_id(file_system_id)
        require_snapshot_id(snapshot_id)

        abandoned = threading.Event()
        try:
            return await asyncio.to_thread(
                self._create_snapshot, file_system_id, snapshot_id, on_progress, (cancel, abandoned)
            )
        except asyncio.CancelledError:
            # asyncio cannot stop the thread, so the event makes the copy stop
            # at its next check and remove its partial copy.
            abandoned.set()
            raise

    async def delete_snapshot(self, file_system_id: str, snapshot_id: str) -> None:
        require_file_system_id(file_system_id)
        require_snapshot_id(snapshot_id)
        await asyncio.to_thread(self._delete_snapshot, file_system_id, snapshot_id)

    async def list_snapshots(self) -> list[StoredSnapshot]:
        return await asyncio.to_thread(scan_snapshot_directories, self.data_root / SNAPSHOTS_DIR)

    async def release_file_system(self, file_system_id: str) -> None:
        require_file_system_id(file_system_id)
        await asyncio.to_thread(self._release_file_system, file_system_id)

    # Blocking implementations, run in a worker thread.

    def _provision_file_system(self, file_system_id: str) -> None:
        path = self._file_system_dir(file_system_id)
        try:
            self._ensure_top_directory(FILE_SYSTEMS_DIR)
            path.mkdir(exist_ok=True)
        except OSError as exc:
            raise DriverError(f"could not provision file system {file_system_id} at {path}: {exc}") from exc

        if not _is_real_directory(path):
            raise DriverError(
                f"could not provision file system {file_system_id}: {path} exists but is not a directory; remove it"
            )
        logger.info("file system %s: data directory %s is ready", file_system_id, path)

    def _create_snapshot(
        self,
        file_system_id: str,
        snapshot_id: str,
        on_progress: ProgressCallback,
        stop_events: Sequence[threading.Event],
    ) -> SnapshotResult:
        source = self._file_system_dir(file_system_id)
        final = self._snapshot_dir(file_system_id, snapshot_id)
        partial = self._partial_dir(file_system_id, snapshot_id)

        existing_size = self._existing_snapshot_size(file_system_id, snapshot_id, final)
        if existing_size is not None:
            return SnapshotResult(size_bytes=existing_size)

        with contextlib.ExitStack() as open_directories:
            source_fd = self._open_source(file_system_id, snapshot_id, source)
            open_directories.callback(os.close, source_fd)
            parent_fd = self._prepare_snapshot_parent(file_system_id, snapshot_id)
            open_directories.callback(os.close, parent_fd)

            logger.info("snapshot %s of file system %s: copying %s", snapshot_id, file_system_id, source)
            started = time.monotonic()
            copier = _TreeCopier(
                file_system_id,
                snapshot_id,
                on_progress,
                stop_events,
                self.progress_interval_seconds,
                self.copy_bandwidth,
            )
            try:
                size = copier.copy_tree(source_fd, str(source), parent_fd, partial.name, str(partial))
                copier.current_path = str(partial)
                # The rename publishes the snapshot, so it comes after every file is in place.
                os.rename(partial.name, final.name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            except SnapshotCancelled:
                self._discard_partial(file_system_id, snapshot_id, partial)
                logger.info("snapshot %s of file system %s: cancelled while copying", snapshot_id, file_system_id)
                raise
            except Exception as exc:
                self._discard_partial(file_system_id, snapshot_id, partial)
                raise DriverError(
                    f"snapshot {snapshot_id} of file system {file_system_id} failed at {copier.current_path}: {exc}"
                ) from exc

        logger.info(
            "snapshot %s of file system %s: created, %s bytes in %.1f s",
            snapshot_id,
            file_system_id,
            size,
            time.monotonic() - started,
        )
        return SnapshotResult(size_bytes=size)

    def _existing_snapshot_size(self, file_system_id: str, snapshot_id: str, final: pathlib.Path) -> int | None:
        """Return the size of the complete snapshot at `final`, or None if there is none."""
        try:
            final_stat = os.lstat(final)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DriverError(f"could not check snapshot {snapshot_id} of file system {file_system_id}: {exc}") from exc

        if not stat.S_ISDIR(final_stat.st_mode):
            raise DriverError(
                f"snapshot {snapshot_id} of file system {file_system_id}: {final} exists but is not a directory; "
                "delete the snapshot to remove it"
            )

        try:
            size = _regular_file_bytes(str(final))
        except OSError as exc:
            raise DriverError(
                f"could not measure existing snapshot {snapshot_id} of file system {file_system_id} at {final}: {exc}"
            ) from exc
        logger.info(
            "snapshot %s of file system %s: already complete with %s bytes, not copying again",
            snapshot_id,
            file_system_id,
            size,
        )
        return size

    def _open_source(self, file_system_id: str, snapshot_id: str, source: pathlib.Path) -> int:
        """Open the file system's data directory, rejecting a symbolic link in its place."""
        try:
            return os.open(source, _OPEN_DIRECTORY_FLAGS)
        except FileNotFoundError:
            raise FileSystemMissing(
                f"cannot create snapshot {snapshot_id}: file system {file_system_id} has no data at {source}; "
                "provision the file system first"
            ) from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise DriverError(
                    f"cannot create snapshot {snapshot_id}: the data path {source} of file system {file_system_id} "
                    "is not a directory, and the local driver does not follow a symbolic link in its place"
                ) from exc
            raise DriverError(
                f"cannot create snapshot {snapshot_id}: could not open file system {file_system_id} at {source}: {exc}"
            ) from exc

    def _prepare_snapshot_parent(self, file_system_id: str, snapshot_id: str) -> int:
        """Create the file system's snapshots directory, discard an interrupted attempt's partial copy, and open it."""
        parent = self._snapshot_dir(file_system_id, snapshot_id).parent
        partial = self._partial_dir(file_system_id, snapshot_id)
        try:
            self._ensure_top_directory(SNAPSHOTS_DIR)
            parent.mkdir(exist_ok=True)
            if _remove_path(partial):
                logger.info(
                    "snapshot %s of file system %s: discarded the partial copy %s of an interrupted attempt",
                    snapshot_id,
                    file_system_id,
                    partial,
                )
            return os.open(parent, _OPEN_DIRECTORY_FLAGS)
        except OSError as exc:
            raise DriverError(
                f"could not prepare snapshot {snapshot_id} of file system {file_system_id} in {parent}: {exc}"
            ) from exc

    def _discard_partial(self, file_system_id: str, snapshot_id: str, partial: pathlib.Path) -> None:
        try:
            _remove_path(partial)
        except OSError as exc:
            # The caller raises the original error, and the next attempt removes this leftover.
            logger.warning(
                "snapshot %s of file system %s: could not remove the partial copy %s: %s",
                snapshot_id,
                file_system_id,
                partial,
                exc,
            )

    def _delete_snapshot(self, file_system_id: str, snapshot_id: str) -> None:
        final = self._snapshot_dir(file_system_id, snapshot_id)
        partial = self._partial_dir(file_system_id, snapshot_id)
        try:
            removed_partial = _remove_path(partial)
            final_exists = os.path.lexists(final)
            if final_exists:
                # Renaming first hides the snapshot at once, so a removal that
                # fails halfway never leaves a half-deleted snapshot that
                # snapshot_exists reports as complete. A retry removes the rest.
                os.rename(final, partial)
                _remove_path(partial)
        except OSError as exc:
            raise DriverError(
                f"could not delete snapshot {snapshot_id} of file system {file_system_id} at {final}: {exc}"
            ) from exc

        if final_exists or removed_partial:
            logger.info("snapshot %s of file system %s: deleted", snapshot_id, file_system_id)
        else:
            logger.debug("snapshot %s of file system %s: already deleted", snapshot_id, file_system_id)


    def _release_file_system(self, file_system_id: str) -> None:
        path = self._file_system_dir(file_system_id)
        try:
            removed = _remove_path(path)
        except OSError as exc:
            raise DriverError(f"could not remove file system {file_system_id} at {path}: {exc}") from exc
        if removed:
            logger.info("file system %s: data directory %s removed", file_system_id, path)
        else:
            logger.debug("file system %s: data directory %s was already gone", file_system_id, path)


class _NodeReplaced(Exception):
    """An entry of the source tree is no longer the type of node that the copy listed."""


@dataclasses.dataclass
class _DirectoryCopy:
    """A source directory being copied, and its copy, both open."""

    source_fd: int
    destination_fd: int
    # Source path, for messages only.
    path: str
    # fstat of source_fd, taken before the copy listed the directory.
    source_stat: os.stat_result
    # Access time to give the copy, from before any listing of the directory.
    atime_ns: int
    # Listed subdirectories that are not copied yet. The flag is False for
    # an entry whose type already changed once, so a second change skips it.
    subdirectories: list[tuple[str, bool]] = dataclasses.field(default_factory=list)

    def close(self) -> None:
        os.close(self.source_fd)
        os.close(self.destination_fd)


class _TreeCopier:
    """Copier of one directory tree into a new directory, in the calling thread.

    It never follows symbolic links, also when a node of the source is
    replaced while the copy runs. Both trees are walked only through open
    directory fds, and every entry is opened relative to its parent's fd
    with O_NOFOLLOW. The metadata of a file or directory comes from fstat
    of the opened node, and that of a symbolic link or FIFO from fstatat
    relative to its directory's fd. An entry whose type changes between the
    listing and the open is copied as what it is now, or skipped if it
    changes again.

    It reports progress to `on_progress` and raises SnapshotCancelled at the
    next check once any of `stop_events` is set. `current_path` names the
    source path being worked on, for error messages.

    NOTE: the copy keeps two fds open per directory level from the root to
    the directory being copied, so a tree deeper than about half of
    RLIMIT_NOFILE fails with EMFILE.
    """

    def __init__(
        self,
        file_system_id: str,
        snapshot_id: str,
        on_progress: ProgressCallback,
        stop_events: Sequence[threading.Event],
        progress_interval_seconds: float,
        bandwidth: int = 0,
    ) -> None:
        self.file_system_id = file_system_id
        self.bandwidth = bandwidth
        self.snapshot_id = snapshot_id
        self.on_progress = on_progress
        self.stop_events = stop_events
        self.progress_interval_seconds = progress_interval_seconds
        self.current_path = ""

        self.bytes_total = 0
        self.bytes_done = 0
        self._started = time.monotonic()
        self._last_report = self._started

        self._try_reflink = True
        self._plain_copy_methods = list(_PLAIN_COPY_METHODS)
        self._skipped_nodes = 0
        self._owner_not_kept = 0
        # Access time of each source directory by (st_dev, st_ino), taken
        # before the measuring pass listed it.
        self._directory_atimes: dict[tuple[int, int], int] = {}

    def copy_tree(
        self, source_fd: int, source_path: str, destination_parent_fd: int, destination_name: str, destination_path: str
    ) -> int:
        """Copy the open directory `source_fd` into the new directory `destination_name` of `destination_parent_fd`.

        Return the bytes of file data copied. The caller keeps ownership of
        both fds, and the paths are for messages only.
        """
        self.current_path = source_path
        root_stat = os.fstat(source_fd)
        self.bytes_total = _regular_file_bytes_at(source_fd, source_path, self._record_directory_atime)
        self._started = time.monotonic()
        self._last_report = self._started

        self.current_path = destination_path
        os.mkdir(destination_name, 0o700, dir_fd=destination_parent_fd)
        destination_fd = os.open(destination_name, _OPEN_DIRECTORY_FLAGS, dir_fd=destination_parent_fd)
        try:
            root_source_fd = os.dup(source_fd)
        except BaseException:
            os.close(destination_fd)
            raise
        root = _DirectoryCopy(root_source_fd, destination_fd, source_path, root_stat, root_stat.st_atime_ns)

        # Depth first, so that only the directories from the root to the
        # current one are open. A directory gets its owner, mode and times
        # after all its content, children before parents. Otherwise creating
        # a child would change its parent's mtime, and a read-only mode would
        # block a worker that does not run as root.
        stack = [root]
        try:
            self._copy_entries(root)
            while stack:
                directory = stack[-1]
                child = self._enter_next_subdirectory(directory)
                if child is None:
                    self._finish_directory(directory)
                    stack.pop()
                    directory.close()
                    continue
                stack.append(child)
                self._copy_entries(child)
        finally:
            for directory in stack:
                directory.close()

        self._log_totals()
        # The final report counts the bytes actually copied, which differ from
        # the measured total when files change during the copy.
        self.on_progress(Progress(bytes_done=self.bytes_done, bytes_total=self.bytes_done, remain_seconds=0))
        self.check_cancel()
        return self.bytes_done

    def check_cancel(self) -> None:
        if any(event.is_set() for event in self.stop_events):
            raise SnapshotCancelled(
                f"snapshot {self.snapshot_id} of file system {self.file_system_id} was cancelled while copying"
            )

    def _record_directory_atime(self, directory_fd: int, path: str) -> None:
        # Listing a directory updates its atime, so the measuring pass records
        # the atime of each directory before it lists it, for the copy to apply.
        self.current_path = path
        self.check_cancel()
        directory_stat = os.fstat(directory_fd)
        self._directory_atimes[(directory_stat.st_dev, directory_stat.st_ino)] = directory_stat.st_atime_ns

    def _copy_entries(self, directory: _DirectoryCopy) -> None:
        """Copy the directory's entries except subdirectories, which are queued in `directory.subdirectories`."""
        self.current_path = directory.path
        with os.scandir(directory.source_fd) as entries:
            for entry in entries:
                self.check_cancel()
                self.current_path = os.path.join(directory.path, entry.name)
                try:
                    # fstatat relative to the directory fd, without following a symbolic link.
                    entry_stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    self._log_vanished(self.current_path)
                    continue
                self._copy_entry(directory, entry.name, entry_stat)

    def _copy_entry(
        self, directory: _DirectoryCopy, name: str, entry_stat: os.stat_result, first_attempt: bool = True
    ) -> None:
        try:
            self._copy_node(directory, name, entry_stat, first_attempt)
        except _NodeReplaced as exc:
            self._copy_replaced_entry(directory, name, str(exc), first_attempt)

    def _copy_node(
        self, directory: _DirectoryCopy, name: str, entry_stat: os.stat_result, first_attempt: bool
    ) -> None:
        """Copy one entry by the type in `entry_stat`, raising _NodeReplaced if the node turns out to have changed."""
        mode = entry_stat.st_mode
        if stat.S_ISDIR(mode):
            directory.subdirectories.append((name, first_attempt))
        elif stat.S_ISREG(mode):
            # NOTE: hard links are copied as separate files, so a snapshot
            # may use more space than its file system.
            self._copy_file(directory, name)
        elif stat.S_ISLNK(mode):
            self._copy_symlink(directory, name, entry_stat)
        elif stat.S_ISFIFO(mode):
            self._copy_fifo(directory, name, entry_stat)
        else:
            self._skip_node(self.current_path, _node_kind(mode))

    def _copy_replaced_entry(self, directory: _DirectoryCopy, name: str, reason: str, first_attempt: bool) -> None:
        """Copy an entry whose type changed after the listing as what it is now, or skip it on a second change."""
        if not first_attempt:
            logger.debug(
                "snapshot %s of file system %s: skipped %s, which changed type again during the copy (%s)",
                self.snapshot_id,
                self.file_system_id,
                self.current_path,
                reason,
            )
            return

        try:
            entry_stat = os.stat(name, dir_fd=directory.source_fd, follow_symlinks=False)
        except FileNotFoundError:
            self._log_vanished(self.current_path)
            return
        logger.debug(
            "snapshot %s of file system %s: %s changed during the copy (%s), copying it as the %s it is now",
            self.snapshot_id,
            self.file_system_id,
            self.current_path,
            reason,
            _node_kind(entry_stat.st_mode),
        )
        self._copy_entry(directory, name, entry_stat, first_attempt=False)

    def _enter_next_subdirectory(self, directory: _DirectoryCopy) -> _DirectoryCopy | None:
        """Open the next queued subdirectory of `directory` and create its copy, or return None when none is left."""
        while directory.subdirectories:
            self.check_cancel()
            name, first_attempt = directory.subdirectories.pop()
            self.current_path = os.path.join(directory.path, name)
            try:
                child = self._open_subdirectory(directory, name)
            except _NodeReplaced as exc:
                self._copy_replaced_entry(directory, name, str(exc), first_attempt)
                continue
            if child is not None:
                return child
        return None

    def _open_subdirectory(self, directory: _DirectoryCopy, name: str) -> _DirectoryCopy | None:
        try:
            source_fd = os.open(name, _OPEN_DIRECTORY_FLAGS, dir_fd=directory.source_fd)
        except FileNotFoundError:
            self._log_vanished(self.current_path)
            return None
        except OSError as exc:
            if exc.errno in _REPLACED_ERRNOS:
                raise _NodeReplaced(f"opening it as a directory failed: {exc.strerror}") from exc
            raise

        try:
            source_stat = os.fstat(source_fd)
            os.mkdir(name, 0o700, dir_fd=directory.destination_fd)
            destination_fd = os.open(name, _OPEN_DIRECTORY_FLAGS, dir_fd=directory.destination_fd)
        except BaseException:
            os.close(source_fd)
            raise
        atime_ns = self._directory_atimes.pop((source_stat.st_dev, source_stat.st_ino), source_stat.st_atime_ns)
        return _DirectoryCopy(source_fd, destination_fd, self.current_path, source_stat, atime_ns)

    def _finish_directory(self, directory: _DirectoryCopy) -> None:
        """Give the directory's copy the source's owner, mode and times."""
        self.current_path = directory.path
        source_stat = directory.source_stat
        self._set_owner(source_stat, fd=directory.destination_fd)
        os.fchmod(directory.destination_fd, stat.S_IMODE(source_stat.st_mode))
        os.utime(directory.destination_fd, ns=(directory.atime_ns, source_stat.st_mtime_ns))

    def _copy_file(self, directory: _DirectoryCopy, name: str) -> None:
        try:
            source_fd = os.open(name, _OPEN_FILE_FLAGS, dir_fd=directory.source_fd)
        except FileNotFoundError:
            self._log_vanished(self.current_path)
            return
        except OSError as exc:
            if exc.errno in _REPLACED_ERRNOS:
                raise _NodeReplaced(f"opening it as a file failed: {exc.strerror}") from exc
            raise

        try:
            source_stat = os.fstat(source_fd)
            if not stat.S_ISREG(source_stat.st_mode):
                raise _NodeReplaced(f"it was a regular file when listed and is a {_node_kind(source_stat.st_mode)} now")

            destination_fd = os.open(name, _CREATE_FILE_FLAGS, 0o600, dir_fd=directory.destination_fd)
            try:
                self._copy_file_data(source_fd, destination_fd, source_stat.st_size)
                # The owner comes before the mode because chown clears the setuid and setgid bits.
                self._set_owner(source_stat, fd=destination_fd)
                os.fchmod(destination_fd, stat.S_IMODE(source_stat.st_mode))
                os.utime(destination_fd, ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns))
            finally:
                os.close(destination_fd)
        finally:
            os.close(source_fd)

    def _copy_file_data(self, source_fd: int, destination_fd: int, size: int) -> None:
        if self._try_reflink and size > 0 and self._clone_file(source_fd, destination_fd):
            self._add_progress(size)
            return

        offset = 0
        while True:
            self.check_cancel()
            copy_chunk = self._plain_copy_methods[0]
            try:
                copied = copy_chunk(source_fd, destination_fd, offset)
            except OSError as exc:
                if exc.errno not in _COPY_UNSUPPORTED_ERRNOS or len(self._plain_copy_methods) == 1:
                    raise
                self._drop_plain_copy_method(exc)
                continue

            if copied == 0:
                # copy_file_range and sendfile return 0 at offset 0 on some
                # file systems that cannot serve them, instead of an error.
                if offset == 0 and size > 0 and len(self._plain_copy_methods) > 1:
                    self._drop_plain_copy_method(None)
                    continue
                return
            offset += copied
            self._add_progress(copied)

    def _clone_file(self, source_fd: int, destination_fd: int) -> bool:
        """Clone the source file into the empty destination as a reflink, or return False if that is unsupported."""
        # NOTE: the test suite runs this success path only where tmp_path is
        # on a file system with reflinks (Btrfs, XFS). Elsewhere it falls back.
        try:
            fcntl.ioctl(destination_fd, FICLONE, source_fd)
        except OSError as exc:
            if exc.errno not in _COPY_UNSUPPORTED_ERRNOS:
                raise
            if exc.errno in _REFLINK_UNSUPPORTED_ERRNOS:
                self._try_reflink = False
                logger.debug(
                    "snapshot %s of file system %s: reflinks are not supported (%s), copying file data instead",
                    self.snapshot_id,
                    self.file_system_id,
                    exc,
                )
            else:
                logger.debug(
                    "snapshot %s of file system %s: reflink of %s failed (%s), copying its data instead",
                    self.snapshot_id,
                    self.file_system_id,
                    self.current_path,
                    exc,
                )
            return False
        return True

    def _drop_plain_copy_method(self, exc: OSError | None) -> None:
        dropped = self._plain_copy_methods.pop(0)
        logger.debug(
            "snapshot %s of file system %s: %s is not supported here (%s), falling back to %s",
            self.snapshot_id,
            self.file_system_id,
            dropped.__name__,
            exc if exc is not None else "no data returned",
            self._plain_copy_methods[0].__name__,
        )

    def _copy_symlink(self, directory: _DirectoryCopy, name: str, link_stat: os.stat_result) -> None:
        # `link_stat` is the listing's fstatat of the link, because a symbolic link cannot be opened to fstat it.
        try:
            target = os.readlink(name, dir_fd=directory.source_fd)
        except FileNotFoundError:
            self._log_vanished(self.current_path)
            return
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise _NodeReplaced("it is no longer a symbolic link") from exc
            raise

        os.symlink(target, name, dir_fd=directory.destination_fd)
        if _CHOWN_ON_SYMLINKS:
            self._set_owner(link_stat, name=name, dir_fd=directory.destination_fd)
        if _UTIME_ON_SYMLINKS:
            os.utime(
                name,
                ns=(link_stat.st_atime_ns, link_stat.st_mtime_ns),
                dir_fd=directory.destination_fd,
                follow_symlinks=False,
            )

    def _copy_fifo(self, directory: _DirectoryCopy, name: str, fifo_stat: os.stat_result) -> None:
        # `fifo_stat` is the listing's fstatat of the FIFO. The source FIFO is
        # not opened, because a reader would unblock a writer waiting in open.
        os.mkfifo(name, 0o600, dir_fd=directory.destination_fd)
        # The new FIFO has no writer, so a non-blocking open for reading returns at once.
        fifo_fd = os.open(
            name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory.destination_fd
        )
        try:
            self._set_owner(fifo_stat, fd=fifo_fd)
            os.fchmod(fifo_fd, stat.S_IMODE(fifo_stat.st_mode))
            os.utime(fifo_fd, ns=(fifo_stat.st_atime_ns, fifo_stat.st_mtime_ns))
        finally:
            os.close(fifo_fd)

    def _set_owner(
        self, source_stat: os.stat_result, fd: int | None = None, name: str | None = None, dir_fd: int | None = None
    ) -> None:
        """Give the open `fd`, or the symbolic link `name` in `dir_fd`, the source's owner and group."""
        try:
            if fd is not None:
                os.fchown(fd, source_stat.st_uid, source_stat.st_gid)
            else:
                os.chown(name, source_stat.st_uid, source_stat.st_gid, dir_fd=dir_fd, follow_symlinks=False)
        except PermissionError as exc:
            self._owner_not_kept += 1
            if self._owner_not_kept == 1:
                logger.debug(
                    "snapshot %s of file system %s: cannot set owner %s:%s on %s (%s); "
                    "copies keep the owner of the worker process where this fails",
                    self.snapshot_id,
                    self.file_system_id,
                    source_stat.st_uid,
                    source_stat.st_gid,
                    self.current_path,
                    exc,
                )

    def _skip_node(self, path: str, kind: str) -> None:
        self._skipped_nodes += 1
        if self._skipped_nodes <= _MAX_SKIP_WARNINGS:
            logger.warning(
                "snapshot %s of file system %s: skipped %s %s, because the local driver does not copy sockets "
                "or device files",
                self.snapshot_id,
                self.file_system_id,
                kind,
                path,
            )

    def _log_vanished(self, path: str) -> None:
        logger.debug(
            "snapshot %s of file system %s: skipped %s, which was removed during the copy",
            self.snapshot_id,
            self.file_system_id,
            path,
        )

    def _log_totals(self) -> None:
        if self._skipped_nodes > _MAX_SKIP_WARNINGS:
            logger.warning(
                "snapshot %s of file system %s: skipped %s sockets and device files in total",
                self.snapshot_id,
                self.file_system_id,
                self._skipped_nodes,
            )
        if self._owner_not_kept > 1:
            logger.debug(
                "snapshot %s of file system %s: could not set the owner of %s nodes",
                self.snapshot_id,
                self.file_system_id,
                self._owner_not_kept,
            )

    def _add_progress(self, copied: int) -> None:
        self.bytes_done += copied
        self._throttle()
        now = time.monotonic()
        if now - self._last_report < self.progress_interval_seconds:
            return
        self._last_report = now
        self.on_progress(
            Progress(bytes_done=self.bytes_done, bytes_total=self.bytes_total, remain_seconds=self._remain_seconds(now))
        )

    def _throttle(self) -> None:
        """Sleep while the copy is ahead of its bandwidth, checking for cancellation."""
        if self.bandwidth <= 0:
            return
        while True:
            ahead = self.bytes_done / self.bandwidth - (time.monotonic() - self._started)
            if ahead <= 0:
                return
            self.check_cancel()
            time.sleep(min(ahead, 0.1))

    def _remain_seconds(self, now: float) -> int | None:
        """Estimate the seconds left from the average copy rate so far."""
        elapsed = now - self._started
        if self.bytes_done <= 0 or elapsed <= 0:
            return None
        rate = self.bytes_done / elapsed
        return math.ceil(max(0, self.bytes_total - self.bytes_done) / rate)


# Plain copies of one chunk at `offset`, each returning the bytes copied (0 at
# the end of the file). They use explicit offsets so that a copy can switch
# to the next method in the middle of a file.


def _copy_file_range_chunk(source_fd: int, destination_fd: int, offset: int) -> int:
    return os.copy_file_range(source_fd, destination_fd, _COPY_CHUNK_BYTES, offset, offset)


def _sendfile_chunk(source_fd: int, destination_fd: int, offset: int) -> int:
    # sendfile writes at the destination's file position.
    os.lseek(destination_fd, offset, os.SEEK_SET)
    return os.sendfile(destination_fd, source_fd, offset, _COPY_CHUNK_BYTES)


def _read_write_chunk(source_fd: int, destination_fd: int, offset: int) -> int:
    data = os.pread(source_fd, _COPY_CHUNK_BYTES, offset)
    view = memoryview(data)
    written = 0
    while written < len(data):
        written += os.pwrite(destination_fd, view[written:], offset + written)
    return len(data)


# Tried in this order; a method that fails with an error from
# _COPY_UNSUPPORTED_ERRNOS is dropped for the rest of the snapshot.
_PLAIN_COPY_METHODS: tuple[Callable[[int, int, int], int], ...] = tuple(
    method
    for method, available in (
        (_copy_file_range_chunk, hasattr(os, "copy_file_range")),
        (_sendfile_chunk, hasattr(os, "sendfile")),
        (_read_write_chunk, True),
    )
    if available
)


def _is_real_directory(path: pathlib.Path) -> bool:
    """Tell whether `path` is a directory, without following a symbolic link in its place."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _node_kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    return f"node of type {stat.S_IFMT(mode):#o}"


def _regular_file_bytes(root: str) -> int:
    """Sum the sizes of the regular files under the directory `root`, without following symbolic links.

    Entries removed during the walk are left out.
    """
    root_fd = os.open(root, _OPEN_DIRECTORY_FLAGS)
    try:
        return _regular_file_bytes_at(root_fd, root)
    finally:
        os.close(root_fd)


def _regular_file_bytes_at(
    root_fd: int, root_path: str, before_listing: Callable[[int, str], None] | None = None
) -> int:
    """Sum the sizes of the regular files under the open directory `root_fd`, never following symbolic links.

    The walk opens each subdirectory relative to its parent's fd with
    O_NOFOLLOW and keeps only the directories from the root to the current
    one open. It calls `before_listing(fd, path)` for each directory, the
    root included, before listing it. Entries that are removed or replaced
    during the walk are left out. `root_fd` stays open.
    """
    root_subdirectories: list[str] = []
    total = _list_regular_file_bytes(root_fd, root_path, root_subdirectories, before_listing)
    # Each frame: an open directory fd, its path, and its subdirectories not walked yet.
    stack = [(root_fd, root_path, root_subdirectories)]
    try:
        while stack:
            directory_fd, path, subdirectories = stack[-1]
            if not subdirectories:
                stack.pop()
                if directory_fd != root_fd:
                    os.close(directory_fd)
                continue

            name = subdirectories.pop()
            child_fd = _open_subdirectory_or_none(directory_fd, name)
            if child_fd is None:
                continue
            child_path = os.path.join(path, name)
            child_subdirectories: list[str] = []
            stack.append((child_fd, child_path, child_subdirectories))
            total += _list_regular_file_bytes(child_fd, child_path, child_subdirectories, before_listing)
    finally:
        for directory_fd, _, _ in stack:
            if directory_fd != root_fd:
                os.close(directory_fd)
    return total


def _list_regular_file_bytes(
    directory_fd: int,
    path: str,
    subdirectories: list[str],
    before_listing: Callable[[int, str], None] | None,
) -> int:
    """Sum the sizes of the regular files in one open directory, and append the names of its subdirectories."""
    if before_listing is not None:
        before_listing(directory_fd, path)
    total = 0
    with os.scandir(directory_fd) as entries:
        for entry in entries:
            try:
                entry_stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(entry_stat.st_mode):
                subdirectories.append(entry.name)
            elif stat.S_ISREG(entry_stat.st_mode):
                total += entry_stat.st_size
    return total


def _open_subdirectory_or_none(directory_fd: int, name: str) -> int | None:
    """Open a subdirectory without following a symbolic link, or return None if it is gone or no longer a directory."""
    try:
        return os.open(name, _OPEN_DIRECTORY_FLAGS, dir_fd=directory_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in _REPLACED_ERRNOS:
            return None
        raise


def _remove_path(path: str | os.PathLike[str]) -> bool:
    """Remove a directory tree, file or symbolic link without following links.

    Return False if nothing was there.
    """
    try:
        path_stat = os.lstat(path)
    except FileNotFoundError:
        return False

    if stat.S_ISDIR(path_stat.st_mode):
        _remove_tree(os.fspath(path))
    else:
        os.unlink(path)
    return True


def _remove_tree(path: str) -> None:
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_grant_access_and_retry)
    else:
        shutil.rmtree(path, onerror=lambda function, failed, info: _grant_access_and_retry(function, failed, info[1]))


def _grant_access_and_retry(function: Callable[..., object], path: str, exc: BaseException) -> None:
    """Add owner rwx to the directories that blocked an rmtree step, then retry the step.

    Snapshots keep the source's directory modes, so a directory without
    write or search permission for its owner would otherwise stop the
    removal when the worker does not run as root.
    """
    if isinstance(exc, FileNotFoundError):
        return  # already removed, for example by a concurrent delete
    if not isinstance(exc, PermissionError):
        raise exc

    changed = _add_owner_rwx(os.path.dirname(path))
    if function in (os.unlink, os.rmdir):
        if not changed:
            raise exc
        function(path)
        return

    # os.lstat, os.open or os.scandir failed on `path` itself, so rmtree
    # skipped everything under it: remove it again now that it is accessible.
    changed = _add_owner_rwx(path) or changed
    if not changed:
        raise exc
    _remove_path(path)


def _add_owner_rwx(path: str) -> bool:
    """Give a directory's owner read, write and search permission, and return whether the mode changed."""
    path_stat = os.lstat(path)
    mode = stat.S_IMODE(path_stat.st_mode)
    if not stat.S_ISDIR(path_stat.st_mode) or mode & stat.S_IRWXU == stat.S_IRWXU:
        return False
    os.chmod(path, mode | stat.S_IRWXU)
    return True
