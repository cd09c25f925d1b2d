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

from service.domain.ids import is_file_system_id, is_snapshot_id
from worker.drivers.base import (
    DriverError,
    FileSystemMissing,
    Progress,
    ProgressCallback,
    SnapshotCancelled,
    SnapshotResult,
    StorageDriver,
    StoredSnapshot,
    scan_snapshot_directories,
)

__all__ = ["FICLONE", "LocalDriver"]

logger = logging.getLogger(__name__)

_FILE_SYSTEMS_DIR = "file-systems"
_SNAPSHOTS_DIR = "snapshots"
_TOP_DIRECTORY_MODE = 0o755

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
        _require_file_system_id(file_system_id)
        return self.data_root / _FILE_SYSTEMS_DIR / file_system_id

    def _snapshot_dir(self, file_system_id: str, snapshot_id: str) -> pathlib.Path:
        _require_file_system_id(file_system_id)
        _require_snapshot_id(snapshot_id)
        return self.data_root / _SNAPSHOTS_DIR / file_system_id / snapshot_id

    def _partial_dir(self, file_system_id: str, snapshot_id: str) -> pathlib.Path:
        _require_file_system_id(file_system_id)
        _require_snapshot_id(snapshot_id)
        return self.data_root / _SNAPSHOTS_DIR / file_system_id / f".{snapshot_id}.partial"

    def _ensure_top_directory(self, name: str) -> pathlib.Path:
        self.data_root.mkdir(parents=True, exist_ok=True)
        path = self.data_root / name
        try:
            path.mkdir(mode=_TOP_DIRECTORY_MODE)
        except FileExistsError:
            return path
        # mkdir applies the umask, so set the mode explicitly.
        path.chmod(_TOP_DIRECTORY_MODE)
        return path

    # StorageDriver methods.

    async def provision_file_system(self, file_system_id: str) -> None:
        _require_file_system_id(file_system_id)
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
        _require_file_system_id(file_system_id)
        _require_snapshot_id(snapshot_id)

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
        _require_file_system_id(file_system_id)
        _require_snapshot_id(snapshot_id)
        await asyncio.to_thread(self._delete_snapshot, file_system_id, snapshot_id)

    async def list_snapshots(self) -> list[StoredSnapshot]:
        return await asyncio.to_thread(scan_snapshot_directories, self.data_root / _SNAPSHOTS_DIR)

    async def release_file_system(self, file_system_id: str) -> None:
        _require_file_system_id(file_system_id)
        await asyncio.to_thread(self._release_file_system, file_system_id)

    # Blocking implementations, run in a worker thread.

    def _provision_file_system(self, file_system_id: str) -> None:
        path = self._file_system_dir(file_system_id)
        try:
            self._ensure_top_directory(_FILE_SYSTEMS_DIR)
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

        self._check_source(file_system_id, snapshot_id, source)

        try:
            self._ensure_top_directory(_SNAPSHOTS_DIR)
            final.parent.mkdir(exist_ok=True)
            if _remove_path(partial):
                logger.info(
                    "snapshot %s of file system %s: discarded the partial copy %s of an interrupted attempt",
                    snapshot_id,
                    file_system_id,
                    partial,
                )
        except OSError as exc:
            raise DriverError(
                f"could not prepare snapshot {snapshot_id} of file system {file_system_id} in {final.parent}: {exc}"
            ) from exc

        logger.info("snapshot %s of file system %s: copying %s", snapshot_id, file_system_id, source)
        started = time.monotonic()
        copier = _TreeCopier(
            file_system_id, snapshot_id, on_progress, stop_events, self.progress_interval_seconds, self.copy_bandwidth
        )
        try:
            size = copier.copy_tree(str(source), str(partial))
            copier.current_path = str(partial)
            # The rename publishes the snapshot, so it comes after every file is in place.
            os.rename(partial, final)
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

    def _check_source(self, file_system_id: str, snapshot_id: str, source: pathlib.Path) -> None:
        try:
            source_stat = os.lstat(source)
        except FileNotFoundError:
            raise FileSystemMissing(
                f"cannot create snapshot {snapshot_id}: file system {file_system_id} has no data at {source}; "
                "provision the file system first"
            ) from None
        except OSError as exc:
            raise DriverError(
                f"cannot create snapshot {snapshot_id}: could not check file system {file_system_id} at {source}: {exc}"
            ) from exc

        if not stat.S_ISDIR(source_stat.st_mode):
            raise DriverError(
                f"cannot create snapshot {snapshot_id}: the data path {source} of file system {file_system_id} "
                "is not a directory"
            )

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


class _TreeCopier:
    """Copier of one directory tree into a new directory, in the calling thread.

    It never follows symbolic links. It reports progress to `on_progress` and
    raises SnapshotCancelled at the next check once any of `stop_events` is set.
    `current_path` names the path being worked on, for error messages.
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
        # Source directory path to its stat, taken before the copy listed it.
        self._source_directory_stats: dict[str, os.stat_result] = {}
        # Destination directories and the source stat to apply to each, in creation order.
        self._directories: list[tuple[str, os.stat_result]] = []

    def copy_tree(self, source: str, destination: str) -> int:
        """Copy `source` into the new directory `destination` and return the bytes of file data copied."""
        self.current_path = source
        root_stat = os.lstat(source)
        self.bytes_total = self._measure_source(source)
        self._started = time.monotonic()
        self._last_report = self._started

        self.current_path = destination
        os.mkdir(destination, 0o700)
        self._directories.append((destination, root_stat))

        pending = [(source, destination)]
        while pending:
            source_dir, destination_dir = pending.pop()
            self._copy_directory_entries(source_dir, destination_dir, pending)

        # Directories get their mode, owner and times after all content is
        # copied, children before parents. Otherwise creating a child would
        # change its parent's mtime, and a read-only mode would block a
        # worker that does not run as root.
        for path, source_stat in reversed(self._directories):
            self.current_path = path
            self._set_owner(path, source_stat)
            os.chmod(path, stat.S_IMODE(source_stat.st_mode))
            os.utime(path, ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns), follow_symlinks=False)

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

    def _measure_source(self, source: str) -> int:
        """Return the bytes of the regular files under `source`, and record the stat of each directory.

        Listing a directory updates its atime, so the copy applies the stat
        recorded here, taken before any listing.
        """
        total = 0
        pending = [source]
        while pending:
            directory = pending.pop()
            self.current_path = directory
            self.check_cancel()
            try:
                entries = os.scandir(directory)
            except FileNotFoundError:
                continue
            with entries:
                for entry in entries:
                    try:
                        entry_stat = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(entry_stat.st_mode):
                        self._source_directory_stats[entry.path] = entry_stat
                        pending.append(entry.path)
                    elif stat.S_ISREG(entry_stat.st_mode):
                        total += entry_stat.st_size
        return total

    def _copy_directory_entries(
        self, source_dir: str, destination_dir: str, pending: list[tuple[str, str]]
    ) -> None:
        self.current_path = source_dir
        try:
            entries = os.scandir(source_dir)
        except FileNotFoundError:
            self._log_vanished(source_dir)
            return

        with entries:
            for entry in entries:
                self.check_cancel()
                self.current_path = entry.path
                destination = os.path.join(destination_dir, entry.name)
                try:
                    entry_stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    self._log_vanished(entry.path)
                    continue
                self._copy_node(entry.path, destination, entry_stat, pending)

    def _copy_node(
        self, source: str, destination: str, source_stat: os.stat_result, pending: list[tuple[str, str]]
    ) -> None:
        mode = source_stat.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(destination, 0o700)
            self._directories.append((destination, self._source_directory_stats.pop(source, source_stat)))
            pending.append((source, destination))
        elif stat.S_ISREG(mode):
            # NOTE: hard links are copied as separate files, so a snapshot
            # may use more space than its file system.
            self._copy_file(source, destination)
        elif stat.S_ISLNK(mode):
            self._copy_symlink(source, destination, source_stat)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(destination, 0o600)
            self._set_owner(destination, source_stat)
            os.chmod(destination, stat.S_IMODE(mode))
            os.utime(destination, ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns), follow_symlinks=False)
        else:
            self._skip_node(source, _node_kind(mode))

    def _copy_file(self, source: str, destination: str) -> None:
        # O_NONBLOCK keeps the open from hanging if the file was replaced by
        # a FIFO after it was listed; it has no effect on regular files.
        try:
            source_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            self._log_vanished(source)
            return

        try:
            source_stat = os.fstat(source_fd)
            if not stat.S_ISREG(source_stat.st_mode):
                raise OSError(f"{source} was replaced by a {_node_kind(source_stat.st_mode)} during the copy")

            destination_fd = os.open(
                destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                self._copy_file_data(source_fd, destination_fd, source_stat.st_size)
                # The owner comes before the mode because chown clears the setuid and setgid bits.
                self._set_owner(destination_fd, source_stat)
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

    def _copy_symlink(self, source: str, destination: str, source_stat: os.stat_result) -> None:
        try:
            target = os.readlink(source)
        except FileNotFoundError:
            self._log_vanished(source)
            return

        os.symlink(target, destination)
        if _CHOWN_ON_SYMLINKS:
            self._set_owner(destination, source_stat)
        if _UTIME_ON_SYMLINKS:
            os.utime(destination, ns=(source_stat.st_atime_ns, source_stat.st_mtime_ns), follow_symlinks=False)

    def _set_owner(self, target: str | int, source_stat: os.stat_result) -> None:
        """Give `target` (a path never followed if a symlink, or an open fd) the source's owner and group."""
        try:
            if isinstance(target, int):
                os.fchown(target, source_stat.st_uid, source_stat.st_gid)
            else:
                os.chown(target, source_stat.st_uid, source_stat.st_gid, follow_symlinks=False)
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


def _require_file_system_id(value: str) -> None:
    if not isinstance(value, str) or not is_file_system_id(value):
        raise ValueError(
            f"invalid file system id {value!r}: expected 1 to 64 ASCII letters, digits and hyphens, "
            "starting with a letter or digit"
        )


def _require_snapshot_id(value: str) -> None:
    if not isinstance(value, str) or not is_snapshot_id(value):
        raise ValueError(f"invalid snapshot id {value!r}: expected 's-extreme-' and 17 lowercase letters and digits")


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
    """Sum the sizes of the regular files under `root`, without following symbolic links.

    Entries removed during the walk are left out.
    """
    total = 0
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            entries = os.scandir(directory)
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
    return total


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
