"""File-system expiry and release: which snapshots go with the file system."""

from __future__ import annotations

import asyncio
import datetime

import asyncpg
import grpc

from nas.v1 import file_systems_pb2, snapshots_pb2
from service.domain import file_systems as file_system_rules
from service.domain import ids
from service.store import file_systems
from tests.drivers import GatedDriver
from tests.support import error_details, provisioned_file_system, wait_until
from worker.app import Worker

MINUTE = datetime.timedelta(minutes=1)


def release(file_system_id: str) -> file_systems_pb2.ReleaseFileSystemRequest:
    return file_systems_pb2.ReleaseFileSystemRequest(file_system_id=file_system_id)


async def insert_snapshot(
    connection: asyncpg.Connection,
    file_system_id: str,
    created_at: datetime.datetime,
    completed_at: datetime.datetime | None,
) -> str:
    snapshot_id = ids.new_snapshot_id()
    await connection.execute(
        """
        INSERT INTO snapshots (snapshot_id, file_system_id, status, retention_days, source_file_system_size,
                               created_at, completed_at)
        VALUES ($1, $2, CASE WHEN $4::timestamptz IS NULL THEN 'progressing' ELSE 'accomplished' END, -1, 100, $3, $4)
        """,
        snapshot_id,
        file_system_id,
        created_at,
        completed_at,
    )
    return snapshot_id


async def listed_ids(api, file_system_id: str) -> set[str]:
    page = await api.snapshots.DescribeSnapshots(
        snapshots_pb2.DescribeSnapshotsRequest(file_system_id=file_system_id, page_size=100)
    )
    return {snapshot.snapshot_id for snapshot in page.snapshots}


async def test_release_deletes_overlapping_snapshots(api, database_url):
    file_system_id = await api.register()
    connection = await asyncpg.connect(database_url)
    try:
        now = await connection.fetchval("SELECT now()")
        expired_time = now - 10 * MINUTE
        await connection.execute(
            "UPDATE file_systems SET expired_time = $2 WHERE file_system_id = $1", file_system_id, expired_time
        )
        before_one = await insert_snapshot(connection, file_system_id, expired_time - 30 * MINUTE, expired_time - 20 * MINUTE)
        before_two = await insert_snapshot(connection, file_system_id, expired_time - 5 * MINUTE, expired_time - MINUTE)
        finished_after = await insert_snapshot(connection, file_system_id, expired_time - 2 * MINUTE, expired_time + MINUTE)
        creating = await insert_snapshot(connection, file_system_id, expired_time - MINUTE, None)
    finally:
        await connection.close()

    response = await api.file_systems.ReleaseFileSystem(release(file_system_id))

    assert set(response.deleted_snapshot_ids) == {finished_after, creating}
    assert await listed_ids(api, file_system_id) == {before_one, before_two}


async def test_release_without_expiry_keeps_finished(api, database_url):
    file_system_id = await api.register()
    connection = await asyncpg.connect(database_url)
    try:
        now = await connection.fetchval("SELECT now()")
        finished = await insert_snapshot(connection, file_system_id, now - 2 * MINUTE, now - MINUTE)
        creating = await insert_snapshot(connection, file_system_id, now - MINUTE, None)
    finally:
        await connection.close()

    response = await api.file_systems.ReleaseFileSystem(release(file_system_id))

    assert list(response.deleted_snapshot_ids) == [creating]
    assert await listed_ids(api, file_system_id) == {finished}


async def test_released_file_system_is_gone(api):
    file_system_id = await api.register()
    await api.file_systems.ReleaseFileSystem(release(file_system_id))

    create = await error_details(
        api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
    )
    register = await error_details(
        api.file_systems.RegisterFileSystem(
            file_systems_pb2.RegisterFileSystemRequest(file_system_id=file_system_id, capacity=100)
        )
    )
    update = await error_details(
        api.file_systems.UpdateFileSystem(
            file_systems_pb2.UpdateFileSystemRequest(file_system_id=file_system_id, status="Running")
        )
    )
    again = await api.file_systems.ReleaseFileSystem(release(file_system_id))
    described = await api.file_systems.DescribeFileSystems(
        file_systems_pb2.DescribeFileSystemsRequest(file_system_ids=[file_system_id])
    )

    assert create.code == grpc.StatusCode.NOT_FOUND
    assert create.reason == "InvalidFileSystem.NotFound"
    assert register.code == grpc.StatusCode.ALREADY_EXISTS
    assert register.reason == "InvalidFileSystem.AlreadyExists"
    assert update.reason == "InvalidFileSystem.NotFound"
    assert list(again.deleted_snapshot_ids) == []
    assert described.total_count == 0


async def test_kept_snapshot_still_deletable(api, database_url):
    file_system_id = await api.register()
    connection = await asyncpg.connect(database_url)
    try:
        now = await connection.fetchval("SELECT now()")
        kept = await insert_snapshot(connection, file_system_id, now - 2 * MINUTE, now - MINUTE)
    finally:
        await connection.close()
    await api.file_systems.ReleaseFileSystem(release(file_system_id))

    page = await api.snapshots.DescribeSnapshots(snapshots_pb2.DescribeSnapshotsRequest(snapshot_ids=[kept]))
    await api.snapshots.DeleteSnapshot(snapshots_pb2.DeleteSnapshotRequest(snapshot_id=kept))

    assert page.snapshots[0].source_file_system_id == file_system_id
    assert await listed_ids(api, file_system_id) == set()


async def test_unknown_release_not_found(api):
    error = await error_details(api.file_systems.ReleaseFileSystem(release("extreme-neverseen")))

    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "InvalidFileSystem.NotFound"


async def test_release_removes_storage(api, worker, data_root):
    file_system_id, directory = await provisioned_file_system(api, data_root)
    (directory / "data.txt").write_text("gone soon")

    await api.file_systems.ReleaseFileSystem(release(file_system_id))

    async def removed() -> bool:
        return not directory.exists()

    await wait_until(removed, what="the file system's directory to be removed")


async def test_release_racing_finishing_worker(api, settings, database, database_url, data_root):
    """The release takes the file system lock first; the finishing worker then finds its snapshot deleted."""
    driver = GatedDriver(data_root)
    worker = Worker(settings, database, driver=driver, run_sweeper=False)
    await worker.start()
    try:
        file_system_id, directory = await provisioned_file_system(api, data_root)
        (directory / "data.txt").write_text("content")
        driver.held.add(file_system_id)
        snapshot_id = (
            await api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
        ).snapshot_id

        async def held() -> bool:
            return snapshot_id in driver.waiting

        await wait_until(held, what="the copy to be held")

        # The release holds the file system's lock while the copy finishes,
        # so the worker's completion waits for it.
        async with database.transaction() as connection:
            await file_systems.lock(connection, file_system_id)
            driver.gate.set()
            snapshot_dir = data_root / "snapshots" / file_system_id / snapshot_id

            async def copied() -> bool:
                return snapshot_dir.exists()

            await wait_until(copied, what="the copy to finish")
            await asyncio.sleep(0.3)
            deleted = await file_system_rules.release_locked(connection, file_system_id)

        async def data_removed() -> bool:
            async with database.transaction() as check:
                return await check.fetchval(
                    "SELECT data_removed_at IS NOT NULL FROM snapshots WHERE snapshot_id = $1", snapshot_id
                )

        await wait_until(data_removed, what="the snapshot's data to be removed")
    finally:
        await worker.stop(grace=5)

    connection = await asyncpg.connect(database_url)
    try:
        final = await connection.fetchrow("SELECT status, deletion_reason FROM snapshots WHERE snapshot_id = $1", snapshot_id)
    finally:
        await connection.close()
    assert deleted == [snapshot_id]
    assert final["status"] == "progressing"
    assert final["deletion_reason"] == "release"
    assert not snapshot_dir.exists()
