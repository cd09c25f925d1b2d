"""The reconciler: storage and rows agree again after crashes and hand edits."""

from __future__ import annotations

import os
import time

import asyncpg

from nas.v1 import snapshots_pb2
from service.domain import ids
from tests.support import provisioned_file_system, wait_for_status
from worker.drivers.local import LocalDriver
from worker.reconciler import Reconciler


def age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


async def test_orphaned_data_removed(api, worker, database, data_root):
    file_system_id, _ = await provisioned_file_system(api, data_root)
    orphan = data_root / "snapshots" / file_system_id / ids.new_snapshot_id()
    orphan.mkdir(parents=True)
    (orphan / "leftover.txt").write_text("no row")
    age(orphan, 7200)
    young = data_root / "snapshots" / file_system_id / ids.new_snapshot_id()
    young.mkdir()

    report = await Reconciler(database, LocalDriver(data_root), grace_seconds=3600).reconcile()

    assert orphan.name in report.removed
    assert not orphan.exists()
    assert young.exists()


async def test_live_snapshot_data_kept(api, worker, database, data_root):
    file_system_id, _ = await provisioned_file_system(api, data_root)
    snapshot_id = (
        await api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
    ).snapshot_id
    await wait_for_status(api, snapshot_id)
    snapshot_dir = data_root / "snapshots" / file_system_id / snapshot_id
    age(snapshot_dir, 7200)

    report = await Reconciler(database, LocalDriver(data_root), grace_seconds=3600).reconcile()

    assert snapshot_id not in report.removed
    assert snapshot_dir.is_dir()


async def test_vanished_data_marks_failed(api, worker, database, data_root, database_url):
    file_system_id, _ = await provisioned_file_system(api, data_root)
    snapshot_id = (
        await api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
    ).snapshot_id
    await wait_for_status(api, snapshot_id)
    await LocalDriver(data_root).delete_snapshot(file_system_id, snapshot_id)

    report = await Reconciler(database, LocalDriver(data_root), grace_seconds=3600).reconcile()

    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow("SELECT status, status_reason FROM snapshots WHERE snapshot_id = $1", snapshot_id)
    finally:
        await connection.close()
    assert snapshot_id in report.marked_failed
    assert row["status"] == "failed"
    assert "missing from storage" in row["status_reason"]
