"""AdminService.ResetSnapshot: operators move stuck snapshots on."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from nas.v1 import admin_pb2, admin_pb2_grpc, snapshots_pb2
from service.domain import ids
from tests.support import describe_one, error_details, provisioned_file_system, wait_for_status
from worker.app import Worker

FAIL = admin_pb2.ResetSnapshotRequest.FAIL
REDRIVE = admin_pb2.ResetSnapshotRequest.REDRIVE


def reset(snapshot_id: str, action: int, reason: str = "stuck for a day") -> admin_pb2.ResetSnapshotRequest:
    return admin_pb2.ResetSnapshotRequest(snapshot_id=snapshot_id, action=action, reason=reason)


@pytest.fixture
def admin(api):
    return admin_pb2_grpc.AdminServiceStub(api.channel)


async def queued_snapshot(api) -> str:
    """A snapshot that stays progressing, because no worker runs."""
    file_system_id = await api.register()
    response = await api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
    return response.snapshot_id


async def test_fail_progressing_snapshot(api, admin):
    snapshot_id = await queued_snapshot(api)

    response = await admin.ResetSnapshot(reset(snapshot_id, FAIL))

    assert response.snapshot.status == "failed"
    assert response.snapshot.status_reason == "Reset by an operator: stuck for a day"
    assert (await describe_one(api, snapshot_id)).status == "failed"


async def test_redrive_completes_snapshot(api, admin, settings, database, data_root, database_url):
    """A snapshot whose lease names a worker that never comes back finishes after a re-drive."""
    provisioner = Worker(settings, database)
    await provisioner.start()
    file_system_id, _ = await provisioned_file_system(api, data_root)
    await provisioner.stop(grace=5)
    snapshot_id = (
        await api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
    ).snapshot_id
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            """
            UPDATE snapshots SET lease_owner = 'vanished-worker', lease_expires_at = now() + interval '1 hour'
            WHERE snapshot_id = $1
            """,
            snapshot_id,
        )
    finally:
        await connection.close()

    worker = Worker(settings, database, run_sweeper=False)
    await worker.start()
    try:
        response = await admin.ResetSnapshot(reset(snapshot_id, REDRIVE))
        finished = await wait_for_status(api, snapshot_id)
    finally:
        await worker.stop(grace=5)

    assert response.snapshot.status == "progressing"
    assert finished.status == "accomplished"


async def test_reset_finished_snapshot_rejected(api, admin, worker, data_root):
    file_system_id, _ = await provisioned_file_system(api, data_root)
    snapshot_id = (
        await api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
    ).snapshot_id
    await wait_for_status(api, snapshot_id)

    error = await error_details(admin.ResetSnapshot(reset(snapshot_id, FAIL)))

    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "InvalidSnapshot.IncorrectStatus"


async def test_reset_unknown_snapshot(admin):
    error = await error_details(admin.ResetSnapshot(reset(ids.new_snapshot_id(), FAIL)))

    assert error.reason == "InvalidSnapshot.NotFound"


async def test_reset_without_action_rejected(api, admin):
    snapshot_id = await queued_snapshot(api)

    error = await error_details(admin.ResetSnapshot(reset(snapshot_id, admin_pb2.ResetSnapshotRequest.ACTION_UNSPECIFIED)))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "InvalidParameter.Action"
