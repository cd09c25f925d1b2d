"""The worker against the real broker and database: snapshots really made on disk."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aio_pika
import asyncpg
import pytest

from nas.v1 import snapshots_pb2
from service import messages
from tests.support import describe_one, provisioned_file_system, wait_for_status, wait_until
from worker import topology
from worker.app import Worker
from worker.drivers.local import LocalDriver


def read_tree(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): path.read_text() for path in sorted(root.rglob("*")) if path.is_file()}


async def test_register_creates_directory(api, worker, data_root):
    _, directory = await provisioned_file_system(api, data_root)

    assert directory.is_dir()
    assert list(directory.iterdir()) == []


async def test_register_again_restores_directory(api, worker, data_root):
    file_system_id, directory = await provisioned_file_system(api, data_root)
    directory.rmdir()

    await api.register(file_system_id)

    async def restored() -> bool:
        return directory.is_dir()

    await wait_until(restored, what="the directory to be provisioned again")


async def test_snapshot_keeps_old_content(api, worker, data_root):
    file_system_id, directory = await provisioned_file_system(api, data_root)
    (directory / "docs").mkdir()
    (directory / "docs" / "report.txt").write_text("quarter one")
    (directory / "notes.txt").write_text("keep me")
    before = read_tree(directory)

    response = await api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
    snapshot = await wait_for_status(api, response.snapshot_id)

    (directory / "docs" / "report.txt").write_text("quarter two, rewritten")
    (directory / "notes.txt").unlink()
    (directory / "new.txt").write_text("added later")

    snapshot_dir = data_root / "snapshots" / file_system_id / response.snapshot_id
    assert snapshot.status == "accomplished"
    assert snapshot.progress == 100
    assert snapshot.remain_time == 0
    assert snapshot.HasField("completed_time")
    assert snapshot.size_bytes == len("quarter one") + len("keep me")
    assert read_tree(snapshot_dir) == before


async def test_outbox_empty_after_publish(api, worker, data_root, database_url):
    file_system_id, _ = await provisioned_file_system(api, data_root)
    response = await api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
    await wait_for_status(api, response.snapshot_id)

    connection = await asyncpg.connect(database_url)
    try:
        left = await connection.fetchval(
            "SELECT count(*) FROM outbox WHERE payload->>'snapshot_id' = $1", response.snapshot_id
        )
    finally:
        await connection.close()

    assert left == 0


async def test_redelivery_makes_no_second_copy(api, worker, data_root, amqp_url):
    file_system_id, directory = await provisioned_file_system(api, data_root)
    (directory / "data.bin").write_bytes(os.urandom(4096))
    response = await api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
    first = await wait_for_status(api, response.snapshot_id)
    copied = data_root / "snapshots" / file_system_id / response.snapshot_id / "data.bin"
    inode_before = copied.stat().st_ino

    # Publish the same work message again, as a broker redelivery would.
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.EXCHANGE)
        body = json.dumps({"snapshot_id": response.snapshot_id, "file_system_id": file_system_id}).encode()
        await exchange.publish(aio_pika.Message(body), routing_key=messages.CREATE_SNAPSHOT)
        queue = await channel.declare_queue(
            topology.queue_name(messages.CREATE_SNAPSHOT), durable=True, arguments=topology.work_queue_arguments()
        )

        async def drained() -> bool:
            declared = await channel.declare_queue(queue.name, passive=True)
            return declared.declaration_result.message_count == 0

        await wait_until(drained, what="the duplicate message to be consumed")
    await asyncio.sleep(0.5)

    second = await describe_one(api, response.snapshot_id)
    assert second.completed_time == first.completed_time
    assert copied.stat().st_ino == inode_before
    assert sorted(p.name for p in copied.parent.parent.iterdir()) == [response.snapshot_id]


async def test_missing_data_fails_snapshot(api, worker, data_root):
    file_system_id, directory = await provisioned_file_system(api, data_root)
    directory.rmdir()

    response = await api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
    snapshot = await wait_for_status(api, response.snapshot_id)

    assert snapshot.status == "failed"
    assert file_system_id in snapshot.status_reason
    assert snapshot.HasField("completed_time")
    retry = await api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
    assert retry.snapshot_id != response.snapshot_id


class SlowDriver(LocalDriver):
    """A local driver whose copy reports progress slowly, so a test can watch it."""

    async def create_snapshot(self, file_system_id, snapshot_id, on_progress, cancel):
        from worker.drivers.base import Progress

        for done in range(0, 100, 20):
            on_progress(Progress(bytes_done=done, bytes_total=100, remain_seconds=(100 - done) // 20))
            await asyncio.sleep(0.4)
        return await super().create_snapshot(file_system_id, snapshot_id, on_progress, cancel)


async def test_progress_visible_while_creating(api, settings, database, data_root):
    worker = Worker(settings, database, driver=SlowDriver(data_root))
    await worker.start()
    try:
        file_system_id, _ = await provisioned_file_system(api, data_root)
        response = await api.snapshots.CreateSnapshot(
            snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id)
        )
        seen = set()

        async def reported() -> bool:
            snapshot = await describe_one(api, response.snapshot_id)
            if snapshot.status == "progressing":
                seen.add((snapshot.progress, snapshot.remain_time))
            return any(progress > 0 for progress, _ in seen) or snapshot.status != "progressing"

        await wait_until(reported, what="progress to be reported")
        final = await wait_for_status(api, response.snapshot_id)
    finally:
        await worker.stop(grace=5)

    assert any(0 < progress < 100 and remain > 0 for progress, remain in seen)
    assert final.status == "accomplished"


async def test_creation_waits_for_provisioning(api, settings, database, data_root, database_url):
    """A creation message that overtakes the provisioning message waits instead of failing."""
    file_system_id = await api.register()
    snapshot_id = (
        await api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
    ).snapshot_id
    connection = await asyncpg.connect(database_url)
    try:
        # Hold the provisioning message back, as a slow queue would.
        await connection.execute(
            "DELETE FROM outbox WHERE routing_key = 'file_system.provision' AND payload->>'file_system_id' = $1",
            file_system_id,
        )
    finally:
        await connection.close()

    worker = Worker(settings, database)
    await worker.start()
    try:
        async def retried() -> bool:
            check = await asyncpg.connect(database_url)
            try:
                error = await check.fetchval("SELECT last_error FROM snapshots WHERE snapshot_id = $1", snapshot_id)
            finally:
                await check.close()
            return error is not None and "not provisioned" in error

        await wait_until(retried, what="the creation to wait for provisioning")
        await api.register(file_system_id)
        snapshot = await wait_for_status(api, snapshot_id, timeout=60)
    finally:
        await worker.stop(grace=5)

    assert snapshot.status == "accomplished"
