"""Tests of BtrfsDriver on a real btrfs file system in a loop-mounted image file.

Most tests need root, btrfs-progs and loop devices (see tests/btrfs.py)
and skip without them. The tests of refusal on other file systems run
anywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nas.v1 import snapshots_pb2
from service.domain.ids import new_snapshot_id
from tests.btrfs import mounted_btrfs
from tests.support import provisioned_file_system, wait_for_status
from worker.app import Worker
from worker.drivers.base import DriverError, DriverUnavailable, FileSystemMissing, SnapshotCancelled, SnapshotResult
from worker.drivers.btrfs import BtrfsDriver

FS = "extreme-01ddddfc"
SNAP = "s-extreme-abcdefghij0123456"
OTHER_SNAP = "s-extreme-zyxwvutsrq9876543"

REPOSITORY = Path(__file__).resolve().parent.parent

# Inode number of every btrfs subvolume's root directory.
SUBVOLUME_ROOT_INODE = 256


@pytest.fixture
def btrfs_root(tmp_path: Path) -> Iterator[Path]:
    """The mount point of a fresh btrfs file system, unmounted after the test."""
    with mounted_btrfs(tmp_path) as mount_point:
        yield mount_point


@pytest.fixture
def driver(btrfs_root: Path) -> BtrfsDriver:
    data_root = btrfs_root / "data"
    data_root.mkdir()
    return BtrfsDriver(data_root)


@pytest.fixture
async def source(driver: BtrfsDriver) -> Path:
    """The provisioned subvolume of file system FS."""
    await driver.provision_file_system(FS)
    return driver.data_root / "file-systems" / FS


def snapshot_path(driver: BtrfsDriver, snapshot_id: str = SNAP) -> Path:
    return driver.data_root / "snapshots" / FS / snapshot_id


async def take_snapshot(
    driver: BtrfsDriver, snapshot_id: str = SNAP, cancel: threading.Event | None = None
) -> SnapshotResult:
    return await driver.create_snapshot(FS, snapshot_id, lambda progress: None, cancel or threading.Event())


def btrfs(*arguments: str | Path) -> str:
    """Run the btrfs command and return its output. A failed command fails the test."""
    result = subprocess.run(["btrfs", *map(str, arguments)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"btrfs {' '.join(map(str, arguments))} failed: {result.stderr}"
    return result.stdout


def subvolumes(mount_point: Path) -> set[str]:
    """Return the paths, relative to the mount point, of every subvolume on the file system."""
    lines = btrfs("subvolume", "list", mount_point).splitlines()
    return {line.split(" path ", 1)[1] for line in lines}


def read_tree(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): path.read_text() for path in sorted(root.rglob("*")) if path.is_file()}


def file_system_type(path: Path) -> str:
    result = subprocess.run(["stat", "--file-system", "--format=%T", str(path)], capture_output=True, text=True)
    return result.stdout.strip()


# Provisioning and release


async def test_provision_creates_subvolume(driver, btrfs_root):
    await driver.provision_file_system(FS)
    await driver.provision_file_system(FS)

    path = driver.data_root / "file-systems" / FS
    assert path.stat().st_ino == SUBVOLUME_ROOT_INODE
    assert subvolumes(btrfs_root) == {f"data/file-systems/{FS}"}
    assert await driver.file_system_exists(FS)


async def test_provision_rejects_plain_directory(driver):
    (driver.data_root / "file-systems" / FS).mkdir(parents=True)

    with pytest.raises(DriverError, match="is not a btrfs subvolume"):
        await driver.provision_file_system(FS)
    assert not await driver.file_system_exists(FS)


async def test_release_removes_subvolume(driver, source, btrfs_root):
    (source / "data.txt").write_text("kept in the snapshot")
    await take_snapshot(driver)

    await driver.release_file_system(FS)
    await driver.release_file_system(FS)

    assert not source.exists()
    assert not await driver.file_system_exists(FS)
    assert subvolumes(btrfs_root) == {f"data/snapshots/{FS}/{SNAP}"}
    assert (snapshot_path(driver) / "data.txt").read_text() == "kept in the snapshot"


# Creation


async def test_snapshot_is_read_only(driver, source):
    (source / "data.txt").write_text("original")
    await take_snapshot(driver)
    snapshot = snapshot_path(driver)

    with pytest.raises(OSError) as new_file:
        (snapshot / "new.txt").write_text("added")
    with pytest.raises(OSError) as appended:
        with open(snapshot / "data.txt", "a") as existing:
            existing.write("changed")

    assert new_file.value.errno == errno.EROFS
    assert appended.value.errno == errno.EROFS
    assert btrfs("property", "get", "-ts", snapshot, "ro").strip() == "ro=true"
    assert (snapshot / "data.txt").read_text() == "original"


async def test_snapshot_keeps_old_content(driver, source):
    (source / "docs").mkdir()
    (source / "docs" / "report.txt").write_text("quarter one")
    (source / "notes.txt").write_text("keep me")
    before = read_tree(source)

    result = await take_snapshot(driver)
    (source / "docs" / "report.txt").write_text("quarter two, rewritten")
    (source / "notes.txt").unlink()
    (source / "new.txt").write_text("added later")

    assert read_tree(snapshot_path(driver)) == before
    assert result.size_bytes == len("quarter one") + len("keep me")
    assert await driver.snapshot_exists(FS, SNAP)


async def test_size_counts_regular_files_once(driver, source):
    (source / "data.bin").write_bytes(b"x" * 5000)
    os.link(source / "data.bin", source / "hard-link.bin")
    (source / "link").symlink_to("data.bin")
    (source / "empty").mkdir()
    sparse = source / "sparse.bin"
    with open(sparse, "wb") as sparse_file:
        sparse_file.truncate(1 << 20)

    result = await take_snapshot(driver)

    # A hard link adds nothing, a symbolic link is not a regular file, and
    # a sparse file counts its apparent size.
    assert result.size_bytes == 5000 + (1 << 20)


async def test_create_is_idempotent(driver, source, btrfs_root):
    (source / "data.txt").write_text("first")
    first = await take_snapshot(driver)
    root_id = btrfs("inspect-internal", "rootid", snapshot_path(driver)).strip()
    (source / "later.txt").write_text("written after the first snapshot")

    second = await take_snapshot(driver)

    assert second.size_bytes == first.size_bytes
    assert btrfs("inspect-internal", "rootid", snapshot_path(driver)).strip() == root_id
    assert subvolumes(btrfs_root) == {f"data/file-systems/{FS}", f"data/snapshots/{FS}/{SNAP}"}
    assert not (snapshot_path(driver) / "later.txt").exists()


async def test_writable_subvolume_at_snapshot_path_rejected(driver, source):
    snapshot = snapshot_path(driver)
    snapshot.parent.mkdir(parents=True)
    btrfs("subvolume", "create", snapshot)

    with pytest.raises(DriverError, match="is a writable subvolume"):
        await take_snapshot(driver)


async def test_missing_file_system_raises(driver):
    with pytest.raises(FileSystemMissing, match=FS):
        await take_snapshot(driver)

    assert not snapshot_path(driver).exists()


async def test_cancel_before_snapshot(driver, source, btrfs_root):
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(SnapshotCancelled):
        await take_snapshot(driver, cancel=cancel)

    assert subvolumes(btrfs_root) == {f"data/file-systems/{FS}"}


class CancelOnceSnapshotExists(threading.Event):
    """A cancel event that reads as set once the snapshot subvolume exists, so the size walk stops."""

    def __init__(self, snapshot: Path) -> None:
        super().__init__()
        self.snapshot = snapshot

    def is_set(self) -> bool:
        return os.path.lexists(self.snapshot)


async def test_cancel_while_measuring_discards_snapshot(driver, source, btrfs_root):
    (source / "data.txt").write_text("some data")

    with pytest.raises(SnapshotCancelled):
        await take_snapshot(driver, cancel=CancelOnceSnapshotExists(snapshot_path(driver)))

    assert not snapshot_path(driver).exists()
    assert subvolumes(btrfs_root) == {f"data/file-systems/{FS}"}


# Deletion


async def test_delete_is_idempotent(driver, source, btrfs_root):
    (source / "data.txt").write_text("x")
    await take_snapshot(driver)

    await driver.delete_snapshot(FS, SNAP)
    await driver.delete_snapshot(FS, SNAP)
    await driver.delete_snapshot(FS, OTHER_SNAP)

    assert not snapshot_path(driver).exists()
    assert not await driver.snapshot_exists(FS, SNAP)
    assert subvolumes(btrfs_root) == {f"data/file-systems/{FS}"}


UNPRIVILEGED_SCRIPT = """
import asyncio, pathlib, sys, threading
from worker.drivers.btrfs import BtrfsDriver

with open("/proc/self/status") as status:
    capabilities = next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))
assert not capabilities >> 21 & 1, "CAP_SYS_ADMIN was not dropped"

async def main(root):
    driver = BtrfsDriver(root)
    await driver.provision_file_system("extreme-01ddddfc")
    (root / "file-systems" / "extreme-01ddddfc" / "a.txt").write_text("abc")
    result = await driver.create_snapshot(
        "extreme-01ddddfc", "s-extreme-abcdefghij0123456", lambda progress: None, threading.Event()
    )
    await driver.delete_snapshot("extreme-01ddddfc", "s-extreme-abcdefghij0123456")
    await driver.release_file_system("extreme-01ddddfc")
    print(result.size_bytes)

asyncio.run(main(pathlib.Path(sys.argv[1])))
"""


def run_without_cap_sys_admin(script: str, data_root: Path) -> subprocess.CompletedProcess[str]:
    """Run a Python script as root without CAP_SYS_ADMIN.

    The kernel treats such a process like an unprivileged user when it
    deletes subvolumes, though file permissions still do not apply to it.
    """
    if subprocess.run(["setpriv", "--version"], capture_output=True).returncode != 0:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_SYS_ADMIN")
    return subprocess.run(
        ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", sys.executable, "-c", script, str(data_root)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPOSITORY,
    )


def test_unprivileged_worker_deletes_snapshots(tmp_path):
    with mounted_btrfs(tmp_path, mount_options=["user_subvol_rm_allowed"]) as mount_point:
        result = run_without_cap_sys_admin(UNPRIVILEGED_SCRIPT, mount_point)
        remaining = subvolumes(mount_point)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"
    assert remaining == set()


def test_unprivileged_worker_needs_mount_option(btrfs_root):
    result = run_without_cap_sys_admin(UNPRIVILEGED_SCRIPT, btrfs_root)

    assert result.returncode != 0
    assert "DriverUnavailable" in result.stderr
    assert "user_subvol_rm_allowed" in result.stderr
    assert subvolumes(btrfs_root) == set()


# Refusal to run


def test_non_btrfs_data_root_rejected(tmp_path):
    if file_system_type(tmp_path) == "btrfs":
        pytest.skip("tmp_path is on btrfs, so it cannot show the refusal")

    with pytest.raises(DriverUnavailable) as refused:
        BtrfsDriver(tmp_path)

    message = str(refused.value)
    assert f"NAS_DATA_ROOT={tmp_path}" in message
    assert "not btrfs" in message


def test_missing_data_root_rejected(tmp_path):
    with pytest.raises(DriverUnavailable, match="does not exist"):
        BtrfsDriver(tmp_path / "missing")


def test_missing_btrfs_command_rejected(btrfs_root):
    with pytest.raises(DriverUnavailable, match="btrfs-progs"):
        BtrfsDriver(btrfs_root, btrfs_command="btrfs-not-installed")


def test_worker_process_exits_when_driver_unavailable(settings, tmp_path):
    if file_system_type(tmp_path) == "btrfs":
        pytest.skip("tmp_path is on btrfs, so the driver would start")
    environment = {
        **os.environ,
        "NAS_DRIVER": "btrfs",
        "NAS_DATA_ROOT": str(tmp_path),
        "NAS_DATABASE_URL": settings.database_url,
        "NAS_AMQP_URL": settings.amqp_url,
        "NAS_MIGRATE_ON_START": "false",
    }

    result = subprocess.run(
        [sys.executable, "-m", "worker"], env=environment, capture_output=True, text=True, timeout=60, cwd=REPOSITORY
    )

    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert result.returncode == 1
    assert len(errors) == 1, result.stderr
    assert f"NAS_DATA_ROOT={tmp_path}" in errors[0]


# Ids


INVALID_FILE_SYSTEM_IDS = ["../etc", "a/b", "", "x" * 65, "-leading-hyphen", "extreme\n", ".", "extreme_01"]
INVALID_SNAPSHOT_IDS = ["s-extreme-../../x", "", "s-extreme-ABCDEFGHIJ0123456", "../s-extreme-abcdefghij0123456"]


@pytest.mark.parametrize("file_system_id", INVALID_FILE_SYSTEM_IDS)
async def test_invalid_file_system_id(driver, file_system_id):
    never = threading.Event()
    calls = [
        driver.provision_file_system(file_system_id),
        driver.file_system_exists(file_system_id),
        driver.snapshot_exists(file_system_id, SNAP),
        driver.create_snapshot(file_system_id, SNAP, lambda progress: None, never),
        driver.delete_snapshot(file_system_id, SNAP),
        driver.release_file_system(file_system_id),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="invalid file system id"):
            await call

    assert list(driver.data_root.iterdir()) == []


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


# Point in time

# 31 digits and a newline. 4096 is a multiple of 32, so no record spans
# two pages.
RECORD_BYTES = 32
LOG_NAMES = ("a.log", "b.log", "c.log")


def record(number: int) -> bytes:
    return b"%031d\n" % number


class LockstepWriter(threading.Thread):
    """Appends record N to a.log, then b.log, then c.log, then record N + 1, until stopped.

    The files are opened with O_DSYNC, so each record is durable before the
    next write starts. A btrfs snapshot keeps the order of durable writes
    across files. Buffered writes that run during the snapshot are captured
    file by file, so without O_DSYNC a later file can be ahead of an
    earlier one.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__(name="lockstep-writer", daemon=True)
        self.directory = directory
        self.stopping = threading.Event()
        self.records = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_DSYNC | os.O_CLOEXEC
        descriptors = [os.open(self.directory / name, flags, 0o644) for name in LOG_NAMES]
        try:
            while not self.stopping.is_set():
                data = record(self.records)
                for descriptor in descriptors:
                    os.write(descriptor, data)
                self.records += 1
        except BaseException as exc:
            self.error = exc
        finally:
            for descriptor in descriptors:
                os.close(descriptor)


def complete_records(path: Path) -> int:
    """Return how many whole records `path` holds, after checking that they are records 0, 1, 2 and so on."""
    data = path.read_bytes()
    count = len(data) // RECORD_BYTES
    expected = b"".join(record(number) for number in range(count))
    assert data[: count * RECORD_BYTES] == expected, f"{path} does not hold records 0 to {count - 1} in order"
    assert record(count).startswith(data[count * RECORD_BYTES :]), f"{path} ends with bytes that are not a record"
    return count


async def test_snapshots_are_point_in_time(driver, source):
    """Each snapshot taken while a writer appends to three files in lockstep shows one instant.

    At any instant the files hold N + 1, N + 1, N or N + 1, N, N or N, N, N
    records. The local driver copies the files one after another while the
    writer goes on, so it can catch b.log or c.log ahead of a.log, and this
    check is not expected to hold for it.
    """
    writer = LockstepWriter(source)
    writer.start()
    seen: list[tuple[int, ...]] = []
    try:
        while writer.records < 10 and writer.is_alive():
            await asyncio.sleep(0.01)
        for _ in range(20):
            snapshot_id = new_snapshot_id()
            await take_snapshot(driver, snapshot_id)
            snapshot = snapshot_path(driver, snapshot_id)
            seen.append(tuple(complete_records(snapshot / name) for name in LOG_NAMES))
    finally:
        writer.stopping.set()
        writer.join(timeout=30)

    assert writer.error is None
    for a_records, b_records, c_records in seen:
        assert a_records >= b_records >= c_records, f"records out of write order: {seen}"
        assert a_records - c_records <= 1, f"files from different instants: {seen}"
    assert len(set(seen)) > 1, f"the writer made no progress between snapshots: {seen}"


# The worker end to end


async def test_worker_snapshot_keeps_old_content(api, settings, database, btrfs_root):
    """The steps of test_snapshot_keeps_old_content in test_worker.py, with NAS_DRIVER=btrfs."""
    worker = Worker(dataclasses.replace(settings, driver="btrfs", data_root=btrfs_root), database)
    await worker.start()
    try:
        file_system_id, directory = await provisioned_file_system(api, btrfs_root)
        (directory / "docs").mkdir()
        (directory / "docs" / "report.txt").write_text("quarter one")
        (directory / "notes.txt").write_text("keep me")
        before = read_tree(directory)

        response = await api.snapshots.CreateSnapshot(
            snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id)
        )
        snapshot = await wait_for_status(api, response.snapshot_id)

        (directory / "docs" / "report.txt").write_text("quarter two, rewritten")
        (directory / "notes.txt").unlink()
        (directory / "new.txt").write_text("added later")
    finally:
        await worker.stop(grace=5)

    snapshot_dir = btrfs_root / "snapshots" / file_system_id / response.snapshot_id
    assert snapshot.status == "accomplished"
    assert snapshot.progress == 100
    assert snapshot.remain_time == 0
    assert snapshot.HasField("completed_time")
    assert snapshot.size_bytes == len("quarter one") + len("keep me")
    assert read_tree(snapshot_dir) == before
    assert directory.stat().st_ino == SUBVOLUME_ROOT_INODE
    assert btrfs("property", "get", "-ts", snapshot_dir, "ro").strip() == "ro=true"
