"""DeleteSnapshot in every state, with the worker removing the data."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from nas.v1 import snapshots_pb2
from service.domain import ids
from tests.drivers import GatedDriver
from tests.support import (
    describe_one,
    error_details,
    provisioned_file_system,
    wait_for_status,
    wait_until,
)
from worker.app import Worker


def create(file_system_id: str, **fields: object) -> snapshots_pb2.CreateSnapshotRequest:
    return snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id, **fields)


def delete(snapshot_id: str) -> snapshots_pb2.DeleteSnapshotRequest:
    return snapshots_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id)


async def listed(api, snapshot_id: str) -> bool:
    page = await api.snapshots.DescribeSnapshots(snapshots_pb2.DescribeSnapshotsRequest(snapshot_ids=[snapshot_id]))
    return page.total_count == 1


async def row(database_url: str, snapshot_id: str) -> asyncpg.Record:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchrow("SELECT * FROM snapshots WHERE snapshot_id = $1", snapshot_id)
    finally:
        await connection.close()


@pytest.fixture
async def gated_worker(settings, database, data_root):
    driver = GatedDriver(data_root)
    worker = Worker(settings, database, driver=driver)
    await worker.start()
    yield driver
    driver.gate.set()
    await worker.stop(grace=5)


async def test_delete_accomplished_removes_data(api, worker, data_root, database_url):
    file_system_id, directory = await provisioned_file_system(api, data_root)
    (directory / "file.txt").write_text("content")
    snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id
    await wait_for_status(api, snapshot_id)
    snapshot_dir = data_root / "snapshots" / file_system_id / snapshot_id
    assert snapshot_dir.is_dir()

    response = await api.snapshots.DeleteSnapshot(delete(snapshot_id))

    assert response.request_id
    assert not await listed(api, snapshot_id)

    async def removed() -> bool:
        return (await row(database_url, snapshot_id))["data_removed_at"] is not None

    await wait_until(removed, what="the worker to remove the data")
    assert not snapshot_dir.exists()
    assert (directory / "file.txt").read_text() == "content"


async def test_delete_retried_succeeds(api, worker, data_root):
    file_system_id, _ = await provisioned_file_system(api, data_root)
    snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id
    await wait_for_status(api, snapshot_id)

    first = await api.snapshots.DeleteSnapshot(delete(snapshot_id))
    second = await api.snapshots.DeleteSnapshot(delete(snapshot_id))

    assert first.request_id != second.request_id


async def test_delete_failed_snapshot(api, worker, data_root):
    file_system_id, directory = await provisioned_file_system(api, data_root)
    directory.rmdir()
    snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id
    assert (await wait_for_status(api, snapshot_id)).status == "failed"

    await api.snapshots.DeleteSnapshot(delete(snapshot_id))

    assert not await listed(api, snapshot_id)


async def test_delete_queued_frees_slot(api):
    """With no worker running the snapshot is still queued; deleting it admits the next one."""
    file_system_id = await api.register()
    snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id

    await api.snapshots.DeleteSnapshot(delete(snapshot_id))
    next_snapshot = await api.snapshots.CreateSnapshot(create(file_system_id))

    assert next_snapshot.snapshot_id != snapshot_id
    page = await api.snapshots.DescribeSnapshots(snapshots_pb2.DescribeSnapshotsRequest(file_system_id=file_system_id))
    assert [snapshot.snapshot_id for snapshot in page.snapshots] == [next_snapshot.snapshot_id]


async def held(driver: GatedDriver, snapshot_id: str) -> None:
    async def waiting() -> bool:
        return snapshot_id in driver.waiting

    await wait_until(waiting, what=f"the copy of {snapshot_id} to be held")


async def test_delete_during_slow_creation(api, gated_worker, data_root, database_url):
    file_system_id, directory = await provisioned_file_system(api, data_root)
    (directory / "file.txt").write_text("content")
    gated_worker.held.add(file_system_id)
    snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id
    await held(gated_worker, snapshot_id)

    await api.snapshots.DeleteSnapshot(delete(snapshot_id))

    async def cancelled() -> bool:
        return snapshot_id in gated_worker.cancelled

    await wait_until(cancelled, what="the creation to be cancelled")

    async def removed() -> bool:
        return (await row(database_url, snapshot_id))["data_removed_at"] is not None

    await wait_until(removed, what="the data to be removed")
    final = await row(database_url, snapshot_id)
    assert final["status"] == "progressing"
    assert final["deletion_reason"] == "user"
    snapshots_dir = data_root / "snapshots" / file_system_id
    assert not snapshots_dir.exists() or list(snapshots_dir.iterdir()) == []
    assert not await listed(api, snapshot_id)


async def test_creation_finishing_after_delete_removes_copy(api, settings, database, data_root, database_url):
    """A copy that completes after the delete message was handled does not come back."""
    driver = GatedDriver(data_root)
    # A heartbeat slower than the whole test keeps the worker from noticing
    # the delete before its copy completes.
    worker = Worker(settings, database, driver=driver)
    worker._tasks._heartbeat_interval = 60
    await worker.start()
    try:
        file_system_id, directory = await provisioned_file_system(api, data_root)
        (directory / "file.txt").write_text("content")
        driver.held.add(file_system_id)
        snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id
        await held(driver, snapshot_id)

        await api.snapshots.DeleteSnapshot(delete(snapshot_id))

        async def delete_handled() -> bool:
            return snapshot_id in driver.deleted

        await wait_until(delete_handled, what="the delete message to be handled")
        driver.gate.set()

        async def removed_twice() -> bool:
            return driver.deleted.count(snapshot_id) == 2

        await wait_until(removed_twice, what="the creator to remove its own copy")
    finally:
        await worker.stop(grace=5)

    final = await row(database_url, snapshot_id)
    assert final["status"] == "progressing"
    assert final["deleted_at"] is not None
    assert not (data_root / "snapshots" / file_system_id / snapshot_id).exists()


async def test_delete_message_for_live_snapshot_ignored(api, settings, database, data_root):
    """A stray delete message never removes a snapshot that is not deleted."""
    driver = GatedDriver(data_root)
    worker = Worker(settings, database, driver=driver)
    await worker.start()
    try:
        file_system_id, _ = await provisioned_file_system(api, data_root)
        snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id
        await wait_for_status(api, snapshot_id)
        outcome = await worker._tasks.delete_snapshot(snapshot_id, file_system_id)
    finally:
        await worker.stop(grace=5)

    assert not outcome.retry
    assert driver.deleted == []
    assert (await describe_one(api, snapshot_id)).status == "accomplished"


async def test_unknown_snapshot_not_found(api):
    error = await error_details(api.snapshots.DeleteSnapshot(delete(ids.new_snapshot_id())))

    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "InvalidSnapshot.NotFound"


@pytest.mark.parametrize(
    ("snapshot_id", "code"),
    [
        ("", "MissingParameter.SnapshotId"),
        ("s-extreme-short", "InvalidParameter.SnapshotId"),
        ("s-extreme-../../../etc/pw", "InvalidParameter.SnapshotId"),
        ("S-EXTREME-6TMSBAS6LJHWHLKH9", "InvalidParameter.SnapshotId"),
    ],
    ids=["missing", "short", "path", "upper case"],
)
async def test_bad_snapshot_id_rejected(api, snapshot_id, code):
    error = await error_details(api.snapshots.DeleteSnapshot(delete(snapshot_id)))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == code
