"""Tests of LocalDriver against real files under tmp_path."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import pathlib
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import types

import pytest

from worker.drivers import local
from worker.drivers.base import DriverError, FileSystemMissing, Progress, SnapshotCancelled, SnapshotResult
from worker.drivers.local import LocalDriver

FS = "extreme-01ddddfc"
SNAP = "s-extreme-abcdefghij0123456"
OTHER_SNAP = "s-extreme-zyxwvutsrq9876543"

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def driver(tmp_path: pathlib.Path) -> LocalDriver:
    return LocalDriver(tmp_path / "data")


@pytest.fixture
async def source(driver: LocalDriver) -> pathlib.Path:
    """The provisioned data directory of file system FS."""
    await driver.provision_file_system(FS)
    return driver.data_root / "file-systems" / FS


def snapshot_dir(driver: LocalDriver, snapshot_id: str = SNAP) -> pathlib.Path:
    return driver.data_root / "snapshots" / FS / snapshot_id


def partial_dir(driver: LocalDriver, snapshot_id: str = SNAP) -> pathlib.Path:
    return driver.data_root / "snapshots" / FS / f".{snapshot_id}.partial"


async def take_snapshot(
    driver: LocalDriver,
    snapshot_id: str = SNAP,
    reports: list[Progress] | None = None,
    cancel: threading.Event | None = None,
) -> SnapshotResult:
    collected = reports if reports is not None else []
    return await driver.create_snapshot(FS, snapshot_id, collected.append, cancel or threading.Event())


def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tree_files(root: pathlib.Path) -> set[str]:
    """Return the relative paths of every node under root, without following symbolic links."""
    found = set()
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(directory, name), root))
    return found


def regular_file_data(root: pathlib.Path) -> list[bytes]:
    """Return the content of every regular file under root, without following symbolic links."""
    contents = []
    for directory, _, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            path = os.path.join(directory, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, "rb") as file:
                    contents.append(file.read())
    return contents


SECRET = b"data of another tenant"


@pytest.fixture
def outside(tmp_path: pathlib.Path) -> pathlib.Path:
    """A directory beside the data root, holding secret.txt, which no snapshot may contain."""
    write(tmp_path / "outside" / "secret.txt", SECRET)
    return tmp_path / "outside"


# Content


async def test_snapshot_keeps_old_content(driver, source):
    write(source / "changed.txt", b"before")
    write(source / "removed.txt", b"gone later")
    write(source / "docs" / "kept.txt", b"kept")

    result = await take_snapshot(driver)

    (source / "changed.txt").write_bytes(b"after, and longer")
    (source / "removed.txt").unlink()
    write(source / "added.txt", b"new")
    snap = snapshot_dir(driver)
    assert (snap / "changed.txt").read_bytes() == b"before"
    assert (snap / "removed.txt").read_bytes() == b"gone later"
    assert (snap / "docs" / "kept.txt").read_bytes() == b"kept"
    assert not (snap / "added.txt").exists()
    assert result.size_bytes == len(b"before") + len(b"gone later") + len(b"kept")


async def test_nested_and_empty_dirs(driver, source):
    write(source / "a" / "b" / "c" / "d" / "deep.txt", b"deep")
    (source / "empty").mkdir()
    write(source / "a" / "empty-file", b"")

    result = await take_snapshot(driver)

    snap = snapshot_dir(driver)
    assert (snap / "a" / "b" / "c" / "d" / "deep.txt").read_bytes() == b"deep"
    assert (snap / "empty").is_dir()
    assert list((snap / "empty").iterdir()) == []
    assert (snap / "a" / "empty-file").read_bytes() == b""
    assert result.size_bytes == 4


async def test_large_file_byte_identical(driver, source):
    data = os.urandom(20 * 1024 * 1024 + 123)
    write(source / "big.bin", data)

    result = await take_snapshot(driver)

    assert (snapshot_dir(driver) / "big.bin").read_bytes() == data
    assert result.size_bytes == len(data)


@pytest.mark.parametrize("method", local._PLAIN_COPY_METHODS, ids=lambda method: method.__name__)
async def test_plain_copy_method_identical(driver, source, monkeypatch, method):
    # Start the fallback chain at `method`. Where reflinks work, the clone copies the file and `method` is not run.
    monkeypatch.setattr(local, "_PLAIN_COPY_METHODS", (method,))
    data = os.urandom(17 * 1024 * 1024 + 5)
    write(source / "big.bin", data)

    result = await take_snapshot(driver)

    assert (snapshot_dir(driver) / "big.bin").read_bytes() == data
    assert result.size_bytes == len(data)


async def test_hard_links_copied_separately(driver, source):
    original = write(source / "original.txt", b"shared")
    os.link(original, source / "link.txt")

    result = await take_snapshot(driver)

    snap = snapshot_dir(driver)
    assert (snap / "link.txt").read_bytes() == b"shared"
    assert os.lstat(snap / "original.txt").st_ino != os.lstat(snap / "link.txt").st_ino
    assert result.size_bytes == 2 * len(b"shared")


async def test_non_utf8_name_copied(driver, source):
    name = b"caf\xe9.txt"
    fd = os.open(os.path.join(bytes(source), name), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"latin-1 name")
    os.close(fd)

    await take_snapshot(driver)

    assert os.listdir(bytes(snapshot_dir(driver))) == [name]


# Metadata


async def test_permission_bits_kept(driver, source):
    modes = {
        "private.txt": 0o640,
        "setuid-tool": 0o4755,
        "read-only.txt": 0o444,
    }
    for name, mode in modes.items():
        write(source / name, b"x").chmod(mode)
    (source / "shared-tmp").mkdir()
    (source / "shared-tmp").chmod(0o1777)
    (source / "group-dir").mkdir()
    (source / "group-dir").chmod(0o2750)
    (source / "locked").mkdir()
    write(source / "locked" / "inside.txt", b"y")
    (source / "locked").chmod(0o555)
    source.chmod(0o750)

    await take_snapshot(driver)

    snap = snapshot_dir(driver)
    for name, mode in modes.items():
        assert stat.S_IMODE(os.lstat(snap / name).st_mode) == mode, name
    assert stat.S_IMODE(os.lstat(snap / "shared-tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(snap / "group-dir").st_mode) == 0o2750
    assert stat.S_IMODE(os.lstat(snap / "locked").st_mode) == 0o555
    assert (snap / "locked" / "inside.txt").read_bytes() == b"y"
    assert stat.S_IMODE(os.lstat(snap).st_mode) == 0o750


async def test_times_kept_to_nanosecond(driver, source):
    write(source / "dir" / "file.txt", b"content")
    (source / "link").symlink_to("dir/file.txt")
    os.mkfifo(source / "pipe")
    times = {
        "dir/file.txt": (1_500_000_000_111_111_111, 1_600_000_000_123_456_789),
        "dir": (1_500_000_000_222_222_222, 1_600_000_000_987_654_321),
        "link": (1_500_000_000_333_333_333, 1_600_000_000_000_000_007),
        "pipe": (1_500_000_000_444_444_444, 1_600_000_000_555_555_555),
        ".": (1_500_000_000_555_555_555, 1_600_000_000_666_666_666),
    }
    for relative, (atime_ns, mtime_ns) in times.items():
        os.utime(source / relative, ns=(atime_ns, mtime_ns), follow_symlinks=False)
    if os.lstat(source / "dir" / "file.txt").st_mtime_ns != times["dir/file.txt"][1]:
        pytest.skip("the file system under tmp_path does not store nanosecond times")

    await take_snapshot(driver)

    snap = snapshot_dir(driver)
    for relative, (atime_ns, mtime_ns) in times.items():
        copied = os.lstat(snap / relative)
        assert copied.st_mtime_ns == mtime_ns, relative
        assert copied.st_atime_ns == atime_ns, relative


@pytest.mark.skipif(not IS_ROOT, reason="setting other owners needs root")
async def test_owner_and_group_kept(driver, source):
    owners = {
        "file.txt": (1234, 5678),
        "dir": (2345, 6789),
        "link": (3456, 7890),
        "pipe": (4567, 8901),
        "setgid-tool": (5678, 9012),
    }
    write(source / "file.txt", b"x")
    (source / "dir").mkdir()
    (source / "link").symlink_to("/etc/passwd")
    os.mkfifo(source / "pipe")
    write(source / "setgid-tool", b"y")
    for name, (uid, gid) in owners.items():
        os.chown(source / name, uid, gid, follow_symlinks=False)
    (source / "setgid-tool").chmod(0o6755)

    await take_snapshot(driver)

    snap = snapshot_dir(driver)
    for name, (uid, gid) in owners.items():
        copied = os.lstat(snap / name)
        assert copied.st_uid == uid, name
        assert copied.st_gid == gid, name
    assert stat.S_IMODE(os.lstat(snap / "setgid-tool").st_mode) == 0o6755


# Symbolic links and special files


async def test_symlinks_kept_not_followed(driver, source, outside):
    write(source / "real.txt", b"real")
    links = {
        "passwd": "/etc/passwd",
        "etc": "/etc",
        "outside-dir": str(outside),
        "outside-file": str(outside / "secret.txt"),
        "outside-relative": "../../../outside/secret.txt",
        "dangling": "missing/target",
        "loop": "loop",
        "inside": "real.txt",
        "nested/outside-dir": str(outside),
    }
    for name, target in links.items():
        (source / name).parent.mkdir(exist_ok=True)
        (source / name).symlink_to(target)

    result = await take_snapshot(driver)

    snap = snapshot_dir(driver)
    for name, target in links.items():
        assert (snap / name).is_symlink(), name
        assert os.readlink(snap / name) == target, name
    assert result.size_bytes == len(b"real")
    assert tree_files(snap) == set(links) | {"real.txt", "nested"}
    assert not any(SECRET in data for data in regular_file_data(snap))


async def test_fifo_recreated(driver, source):
    os.mkfifo(source / "pipe", 0o640)
    (source / "pipe").chmod(0o640)

    await take_snapshot(driver)

    copied = os.lstat(snapshot_dir(driver) / "pipe")
    assert stat.S_ISFIFO(copied.st_mode)
    assert stat.S_IMODE(copied.st_mode) == 0o640


async def test_socket_skipped_with_warning(driver, source, monkeypatch, caplog):
    # A relative name keeps the socket path under the 108-byte limit of sun_path.
    monkeypatch.chdir(source)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("app.sock")
    write(source / "data.txt", b"data")

    try:
        with caplog.at_level(logging.WARNING, logger="worker.drivers.local"):
            await take_snapshot(driver)
    finally:
        server.close()

    assert tree_files(snapshot_dir(driver)) == {"data.txt"}
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(source / "app.sock") in warnings[0]
    assert SNAP in warnings[0]
    assert FS in warnings[0]


@pytest.mark.skipif(not IS_ROOT, reason="creating device files needs root")
async def test_device_file_skipped(driver, source, caplog):
    try:
        os.mknod(source / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("this container does not allow mknod")

    with caplog.at_level(logging.WARNING, logger="worker.drivers.local"):
        await take_snapshot(driver)

    assert tree_files(snapshot_dir(driver)) == set()
    assert any(str(source / "null") in record.getMessage() for record in caplog.records)


# Idempotency and leftovers


async def test_repeat_create_skips_copy(driver, source):
    write(source / "file.txt", b"first copy")
    first = await take_snapshot(driver)
    inode = os.lstat(snapshot_dir(driver) / "file.txt").st_ino
    write(source / "later.txt", b"written after the snapshot")

    reports: list[Progress] = []
    second = await take_snapshot(driver, reports=reports)

    assert second == first
    assert reports == []
    assert os.lstat(snapshot_dir(driver) / "file.txt").st_ino == inode
    assert not (snapshot_dir(driver) / "later.txt").exists()


async def test_leftover_partial_replaced(driver, source):
    write(source / "file.txt", b"fresh")
    stale = partial_dir(driver)
    write(stale / "stale.txt", b"from an interrupted attempt")
    (stale / "locked").mkdir()
    (stale / "locked").chmod(0o500)

    result = await take_snapshot(driver)

    assert tree_files(snapshot_dir(driver)) == {"file.txt"}
    assert not os.path.lexists(stale)
    assert result.size_bytes == len(b"fresh")


async def test_missing_file_system_raises(driver):
    with pytest.raises(FileSystemMissing) as raised:
        await take_snapshot(driver)

    assert FS in str(raised.value)
    assert str(driver.data_root / "file-systems" / FS) in str(raised.value)
    assert not os.path.lexists(partial_dir(driver))


async def test_symlinked_file_system_rejected(driver, outside):
    (driver.data_root / "file-systems").mkdir(parents=True)
    (driver.data_root / "file-systems" / FS).symlink_to(outside)

    assert await driver.file_system_exists(FS) is False
    with pytest.raises(DriverError, match="is not a directory") as raised:
        await take_snapshot(driver)
    assert FS in str(raised.value)
    assert str(driver.data_root / "file-systems" / FS) in str(raised.value)
    assert not os.path.lexists(snapshot_dir(driver))
    assert not os.path.lexists(partial_dir(driver))


# Nodes replaced while the copy runs


class OsWithOpenHook(types.ModuleType):
    """The os module with `open` replaced, to stand in for `os` inside the local driver module."""

    def __init__(self, open_hook) -> None:
        super().__init__("os")
        self.open = open_hook

    def __getattr__(self, name: str):
        return getattr(os, name)


def replace_on_open(monkeypatch, driver: LocalDriver, name: str, replace, during_copy: bool = True) -> list[str]:
    """Make the driver call `replace()` right before its first open of the entry `name`, then open as usual.

    The driver opens an entry relative to its directory's fd after it listed
    the directory, so `replace()` runs in the window between the listing and
    the open. With `during_copy`, only opens after the partial copy exists
    count, which skips the measuring pass. The returned list gets `name`
    once the hook has fired.
    """
    fired: list[str] = []

    def open_hook(path, flags, mode=0o777, *, dir_fd=None):
        copying = os.path.lexists(partial_dir(driver))
        if path == name and dir_fd is not None and not fired and (copying or not during_copy):
            fired.append(path)
            replace()
        return os.open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(local, "os", OsWithOpenHook(open_hook))
    return fired


@pytest.mark.parametrize("during_copy", [False, True], ids=["while-measuring", "while-copying"])
async def test_directory_swapped_for_symlink(driver, source, outside, tmp_path, monkeypatch, during_copy):
    write(source / "kept.txt", b"kept")
    write(source / "sub" / "inner.txt", b"inner")

    def swap() -> None:
        os.rename(source / "sub", tmp_path / "moved-sub")
        (source / "sub").symlink_to(outside)

    fired = replace_on_open(monkeypatch, driver, "sub", swap, during_copy)
    result = await take_snapshot(driver)

    snap = snapshot_dir(driver)
    copied = snap / "sub"
    assert fired == ["sub"]
    assert not any(SECRET in data for data in regular_file_data(snap))
    assert "sub/secret.txt" not in tree_files(snap)
    assert not os.path.lexists(copied) or (copied.is_symlink() and os.readlink(copied) == str(outside))
    assert result.size_bytes == len(b"kept")


async def test_file_swapped_for_symlink(driver, source, outside, monkeypatch):
    write(source / "kept.txt", b"kept")
    write(source / "data.txt", b"data")

    def swap() -> None:
        (source / "data.txt").unlink()
        (source / "data.txt").symlink_to(outside / "secret.txt")

    fired = replace_on_open(monkeypatch, driver, "data.txt", swap)
    result = await take_snapshot(driver)

    snap = snapshot_dir(driver)
    copied = snap / "data.txt"
    assert fired == ["data.txt"]
    assert not any(SECRET in data for data in regular_file_data(snap))
    assert not os.path.lexists(copied) or (copied.is_symlink() and os.readlink(copied) == str(outside / "secret.txt"))
    assert result.size_bytes == len(b"kept")


async def test_file_swapped_for_fifo(driver, source, monkeypatch):
    write(source / "data.txt", b"data")

    def swap() -> None:
        (source / "data.txt").unlink()
        os.mkfifo(source / "data.txt")

    fired = replace_on_open(monkeypatch, driver, "data.txt", swap)
    # A blocking open of the FIFO would hang here until the test times out.
    result = await take_snapshot(driver)

    assert fired == ["data.txt"]
    assert stat.S_ISFIFO(os.lstat(snapshot_dir(driver) / "data.txt").st_mode)
    assert result.size_bytes == 0


async def test_destination_swap_not_followed(driver, source, tmp_path, monkeypatch):
    write(source / "sub" / "later.txt", b"later")
    redirect = tmp_path / "redirect"
    redirect.mkdir()

    def swap() -> None:
        # The copy has created and opened sub in the partial copy before it opens sub/later.txt.
        copied_sub = partial_dir(driver) / "sub"
        os.rename(copied_sub, tmp_path / "moved-copy")
        copied_sub.symlink_to(redirect)

    fired = replace_on_open(monkeypatch, driver, "later.txt", swap)
    await take_snapshot(driver)

    assert fired == ["later.txt"]
    assert list(redirect.iterdir()) == []
    assert (tmp_path / "moved-copy" / "later.txt").read_bytes() == b"later"


# Cancellation and errors


async def test_cancel_mid_copy_cleans_up(driver, source):
    for index in range(300):
        write(source / f"dir-{index % 7}" / f"file-{index}.txt", b"x" * 4096)
    driver.progress_interval_seconds = 0.0
    cancel = threading.Event()
    reports: list[Progress] = []

    def cancel_halfway(progress: Progress) -> None:
        reports.append(progress)
        if progress.bytes_done * 2 >= progress.bytes_total:
            cancel.set()

    with pytest.raises(SnapshotCancelled):
        await driver.create_snapshot(FS, SNAP, cancel_halfway, cancel)

    assert reports[-1].bytes_done < 300 * 4096
    assert not os.path.lexists(snapshot_dir(driver))
    assert not os.path.lexists(partial_dir(driver))
    assert await driver.snapshot_exists(FS, SNAP) is False


async def test_cancel_before_start(driver, source):
    write(source / "file.txt", b"x")
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(SnapshotCancelled):
        await take_snapshot(driver, cancel=cancel)

    assert not os.path.lexists(snapshot_dir(driver))
    assert not os.path.lexists(partial_dir(driver))


async def test_task_cancel_stops_copy(driver, source):
    for index in range(50):
        write(source / f"file-{index}.txt", b"x" * 1024)
    driver.progress_interval_seconds = 0.0
    copy_started = threading.Event()
    resume = threading.Event()

    def block_first_report(progress: Progress) -> None:
        copy_started.set()
        resume.wait(10)

    task = asyncio.create_task(driver.create_snapshot(FS, SNAP, block_first_report, threading.Event()))
    assert await asyncio.to_thread(copy_started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    resume.set()

    deadline = time.monotonic() + 10
    while os.path.lexists(partial_dir(driver)) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not os.path.lexists(partial_dir(driver))
    assert not os.path.lexists(snapshot_dir(driver))


async def test_copy_error_names_path(driver, source):
    write(source / "first.bin", b"x" * 1000)
    write(source / "sub" / "later.txt", b"later")
    driver.progress_interval_seconds = 0.0

    def plant_conflict(progress: Progress) -> None:
        # The copy creates a directory's subdirectories after its other
        # entries, so "sub" is not copied yet when first.bin reports progress.
        conflict = partial_dir(driver) / "sub"
        if not os.path.lexists(conflict):
            conflict.mkdir()

    with pytest.raises(DriverError) as raised:
        await driver.create_snapshot(FS, SNAP, plant_conflict, threading.Event())

    message = str(raised.value)
    assert SNAP in message
    assert FS in message
    assert str(source / "sub") in message
    assert isinstance(raised.value.__cause__, FileExistsError)
    assert not os.path.lexists(partial_dir(driver))
    assert not os.path.lexists(snapshot_dir(driver))


DEEP_NAME = "d" * 250


def open_deep_directory(root: pathlib.Path, levels: int, create: bool) -> int:
    """Open the directory `levels` levels of DEEP_NAME below root, creating them if asked, and return its fd.

    Paths longer than PATH_MAX cannot be opened at once, so this goes one level at a time.
    """
    directory_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(levels):
        if create:
            os.mkdir(DEEP_NAME, dir_fd=directory_fd)
        child_fd = os.open(DEEP_NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=directory_fd)
        os.close(directory_fd)
        directory_fd = child_fd
    return directory_fd


async def test_paths_beyond_path_max_copied(driver, source):
    levels = 20
    assert len(str(source)) + levels * (len(DEEP_NAME) + 1) > 4096
    directory_fd = open_deep_directory(source, levels, create=True)
    try:
        file_fd = os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=directory_fd)
        os.write(file_fd, b"deep")
        os.close(file_fd)
    finally:
        os.close(directory_fd)

    result = await take_snapshot(driver)
    again = await take_snapshot(driver)

    directory_fd = open_deep_directory(snapshot_dir(driver), levels, create=False)
    try:
        file_fd = os.open("deep.txt", os.O_RDONLY, dir_fd=directory_fd)
        copied = os.read(file_fd, 100)
        os.close(file_fd)
    finally:
        os.close(directory_fd)
    assert copied == b"deep"
    assert result.size_bytes == len(b"deep")
    assert again == result

    await driver.delete_snapshot(FS, SNAP)
    assert not os.path.lexists(snapshot_dir(driver))


async def test_progress_callback_error_wrapped(driver, source):
    write(source / "file.txt", b"x")

    def fail(progress: Progress) -> None:
        raise RuntimeError("progress sink is down")

    with pytest.raises(DriverError, match="progress sink is down") as raised:
        await driver.create_snapshot(FS, SNAP, fail, threading.Event())

    assert isinstance(raised.value.__cause__, RuntimeError)
    assert not os.path.lexists(partial_dir(driver))
    assert not os.path.lexists(snapshot_dir(driver))


async def test_vanished_file_skipped(driver, source, caplog):
    for index in range(50):
        write(source / f"file-{index}.txt", b"x")
    driver.progress_interval_seconds = 0.0

    def remove_all_sources(progress: Progress) -> None:
        for path in source.glob("file-*.txt"):
            path.unlink()

    with caplog.at_level(logging.DEBUG, logger="worker.drivers.local"):
        result = await driver.create_snapshot(FS, SNAP, remove_all_sources, threading.Event())

    assert len(tree_files(snapshot_dir(driver))) == 1
    assert result.size_bytes == 1
    assert any("removed during the copy" in record.getMessage() for record in caplog.records)


# Progress


async def test_progress_ends_complete(driver, source):
    write(source / "a.bin", b"a" * 1000)
    write(source / "sub" / "b.bin", b"b" * 2345)
    driver.progress_interval_seconds = 0.0
    reports: list[Progress] = []

    result = await take_snapshot(driver, reports=reports)

    assert reports[-1].bytes_done == result.size_bytes
    assert reports[-1].bytes_total == result.size_bytes
    assert reports[-1].remain_seconds == 0
    assert result.size_bytes == 3345
    done = [report.bytes_done for report in reports]
    assert done == sorted(done)


async def test_progress_reports_throttled(driver, source):
    for index in range(200):
        write(source / f"file-{index}.txt", b"x" * 100)
    reports: list[Progress] = []

    started = time.monotonic()
    await take_snapshot(driver, reports=reports)
    elapsed = time.monotonic() - started

    # One report per 0.2 s interval that passed, and the final one.
    assert len(reports) <= elapsed / 0.2 + 2
    assert reports[-1].bytes_done == 200 * 100


# Existence checks and provisioning


async def test_exists_checks(driver, source):
    assert await driver.file_system_exists(FS) is True
    assert await driver.file_system_exists("extreme-other") is False
    assert await driver.snapshot_exists(FS, SNAP) is False

    partial_dir(driver).mkdir(parents=True)
    assert await driver.snapshot_exists(FS, SNAP) is False

    await take_snapshot(driver)
    assert await driver.snapshot_exists(FS, SNAP) is True
    assert await driver.snapshot_exists(FS, OTHER_SNAP) is False


async def test_provision_idempotent_mode_755(driver):
    previous_umask = os.umask(0o077)
    try:
        await driver.provision_file_system(FS)
        write(driver.data_root / "file-systems" / FS / "file.txt", b"kept")
        await driver.provision_file_system(FS)
    finally:
        os.umask(previous_umask)

    assert (driver.data_root / "file-systems" / FS / "file.txt").read_bytes() == b"kept"
    assert stat.S_IMODE(os.lstat(driver.data_root / "file-systems").st_mode) == 0o755


async def test_snapshots_dir_mode_755(driver, source):
    previous_umask = os.umask(0o077)
    try:
        await take_snapshot(driver)
    finally:
        os.umask(previous_umask)

    assert stat.S_IMODE(os.lstat(driver.data_root / "snapshots").st_mode) == 0o755


# Invalid ids

INVALID_FILE_SYSTEM_IDS = ["../etc", "a/b", "", "x" * 65, "-leading-hyphen", "extreme\n", ".", "extreme_01"]
INVALID_SNAPSHOT_IDS = ["s-extreme-../../x", "", "s-extreme-ABCDEFGHIJ0123456", "../s-extreme-abcdefghij0123456"]


@pytest.mark.parametrize("file_system_id", INVALID_FILE_SYSTEM_IDS)
async def test_invalid_file_system_id(driver, tmp_path, file_system_id):
    never = threading.Event()
    calls = [
        driver.provision_file_system(file_system_id),
        driver.file_system_exists(file_system_id),
        driver.snapshot_exists(file_system_id, SNAP),
        driver.create_snapshot(file_system_id, SNAP, lambda progress: None, never),
        driver.delete_snapshot(file_system_id, SNAP),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="invalid file system id"):
            await call

    assert not (tmp_path / "etc").exists()
    assert not driver.data_root.exists()


@pytest.mark.parametrize("snapshot_id", INVALID_SNAPSHOT_IDS)
async def test_invalid_snapshot_id(driver, source, snapshot_id):
    never = threading.Event()
    calls = [
        driver.snapshot_exists(FS, snapshot_id),
        driver.create_snapshot(FS, snapshot_id, lambda progress: None, never),
        driver.delete_snapshot(FS, snapshot_id),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="invalid snapshot id"):
            await call

    assert not (driver.data_root / "snapshots").exists()


# Delete


async def test_delete_is_idempotent(driver, source):
    write(source / "file.txt", b"x")
    await take_snapshot(driver)

    await driver.delete_snapshot(FS, SNAP)
    await driver.delete_snapshot(FS, SNAP)
    await driver.delete_snapshot(FS, OTHER_SNAP)

    assert not os.path.lexists(snapshot_dir(driver))
    assert await driver.snapshot_exists(FS, SNAP) is False
    assert (source / "file.txt").read_bytes() == b"x"


async def test_delete_removes_partial(driver, source):
    write(partial_dir(driver) / "half.txt", b"half")

    await driver.delete_snapshot(FS, SNAP)

    assert not os.path.lexists(partial_dir(driver))


async def test_delete_keeps_symlink_target(driver, tmp_path):
    target = tmp_path / "target"
    write(target / "precious.txt", b"precious")
    snapshot_dir(driver).parent.mkdir(parents=True)
    snapshot_dir(driver).symlink_to(target)

    assert await driver.snapshot_exists(FS, SNAP) is False
    await driver.delete_snapshot(FS, SNAP)

    assert not os.path.lexists(snapshot_dir(driver))
    assert (target / "precious.txt").read_bytes() == b"precious"


async def test_delete_read_only_dirs(driver, source):
    write(source / "open" / "locked" / "no-read" / "file.txt", b"x")
    write(source / "open" / "no-search" / "file.txt", b"y")
    write(source / "no-write" / "file.txt", b"z")
    await take_snapshot(driver)
    snap = snapshot_dir(driver)
    # Children first, because a parent without search permission would hide its children from chmod.
    (snap / "open" / "locked" / "no-read").chmod(0o000)
    (snap / "open" / "locked").chmod(0o500)
    (snap / "open" / "no-search").chmod(0o600)
    (snap / "no-write").chmod(0o500)
    snap.chmod(0o500)

    if IS_ROOT:
        delete_without_dac_override(driver)
    else:
        await driver.delete_snapshot(FS, SNAP)

    assert not os.path.lexists(snap)
    assert not os.path.lexists(partial_dir(driver))


_DELETE_SCRIPT = """
import asyncio, pathlib, sys
from worker.drivers.local import LocalDriver

data_root, file_system_id, snapshot_id, probe = sys.argv[1:]
try:
    open(probe, "x").close()
except PermissionError:
    pass
else:
    sys.exit("directory permissions are not enforced; the test would prove nothing")
asyncio.run(LocalDriver(pathlib.Path(data_root)).delete_snapshot(file_system_id, snapshot_id))
"""


def delete_without_dac_override(driver: LocalDriver) -> None:
    """Run delete_snapshot as root without the capabilities that bypass file permissions."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is needed to drop CAP_DAC_OVERRIDE when the tests run as root")
    probe = snapshot_dir(driver) / "no-write" / "probe"
    completed = subprocess.run(
        [
            setpriv,
            "--bounding-set=-dac_override,-dac_read_search,-fowner",
            sys.executable,
            "-c",
            _DELETE_SCRIPT,
            str(driver.data_root),
            FS,
            SNAP,
            str(probe),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr


async def test_bandwidth_limit_slows_copy(tmp_path):
    """A 1 MiB tree at 4 MiB/s takes at least about a quarter second, and the copy is intact."""
    driver = LocalDriver(tmp_path / "root", copy_bandwidth=4 * 1024 * 1024)
    await driver.provision_file_system("extreme-bandwidth")
    source = tmp_path / "root" / "file-systems" / "extreme-bandwidth"
    payload = os.urandom(1024 * 1024)
    (source / "blob").write_bytes(payload)

    started = time.monotonic()
    result = await driver.create_snapshot("extreme-bandwidth", "s-extreme-" + "b" * 17, lambda _: None, threading.Event())
    elapsed = time.monotonic() - started

    assert result.size_bytes == len(payload)
    assert elapsed >= 0.2
    assert (tmp_path / "root" / "snapshots" / "extreme-bandwidth" / ("s-extreme-" + "b" * 17) / "blob").read_bytes() == payload
