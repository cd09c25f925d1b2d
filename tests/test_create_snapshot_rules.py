"""CreateSnapshot rules that depend on state: status, limit, one creation, client tokens."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2

from nas.v1 import file_systems_pb2, snapshots_pb2
from service.domain import ids
from tests.conftest import running_api
from tests.support import error_details


def create(file_system_id: str, **fields: object) -> snapshots_pb2.CreateSnapshotRequest:
    return snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id, **fields)


def in_hours(hours: float) -> timestamp_pb2.Timestamp:
    moment = timestamp_pb2.Timestamp()
    moment.FromDatetime(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=hours))
    return moment


async def finish_creation(database_url: str, file_system_id: str, status: str = "accomplished") -> None:
    """Mark the file system's snapshot in creation as finished, standing in for a worker."""
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            """
            UPDATE snapshots SET status = $2, progress = 100, completed_at = now()
            WHERE file_system_id = $1 AND status = 'progressing'
            """,
            file_system_id,
            status,
        )
    finally:
        await connection.close()


async def insert_finished_snapshots(database_url: str, file_system_id: str, count: int) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.executemany(
            """
            INSERT INTO snapshots (snapshot_id, file_system_id, status, retention_days,
                                   source_file_system_size, completed_at, progress)
            VALUES ($1, $2, 'accomplished', -1, 100, now(), 100)
            """,
            [(ids.new_snapshot_id(), file_system_id) for _ in range(count)],
        )
    finally:
        await connection.close()


async def test_snapshot_id_and_request_id_formats(api):
    file_system_id = await api.register()

    response = await api.snapshots.CreateSnapshot(create(file_system_id))

    assert ids.SNAPSHOT_ID.match(response.snapshot_id)
    assert response.request_id == response.request_id.upper()
    assert len(response.request_id) == 36


async def test_new_snapshot_progressing_with_fields(api):
    file_system_id = await api.register(capacity=2000)

    response = await api.snapshots.CreateSnapshot(create(file_system_id, snapshot_name="Finance", retention_days=30))

    page = await api.snapshots.DescribeSnapshots(snapshots_pb2.DescribeSnapshotsRequest(file_system_id=file_system_id))
    assert page.total_count == 1
    snapshot = page.snapshots[0]
    assert snapshot.snapshot_id == response.snapshot_id
    assert snapshot.status == "progressing"
    assert snapshot.snapshot_type == "user"
    assert snapshot.source_file_system_id == file_system_id
    assert snapshot.source_file_system_size == 2000
    assert snapshot.retention_days == 30
    assert snapshot.HasField("create_time")
    assert not snapshot.HasField("completed_time")


@pytest.mark.parametrize("file_system_type", ["standard", "cpfs"])
async def test_non_extreme_type_not_supported(api, file_system_type):
    file_system_id = await api.register(file_system_type=file_system_type)

    error = await error_details(api.snapshots.CreateSnapshot(create(file_system_id)))

    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "InvalidFileSystemType.NotSupported"


@pytest.mark.parametrize("status", ["Pending", "Stopped", "Extending", "Stopping", "Deleting"])
async def test_status_not_running_rejected(api, status):
    file_system_id = await api.register(status=status)

    error = await error_details(api.snapshots.CreateSnapshot(create(file_system_id)))

    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "Instance.IncorrectStatus"
    assert status in error.message


async def test_expired_file_system_rejected_until_renewed(api):
    file_system_id = await api.register(expired_time=in_hours(-1))

    error = await error_details(api.snapshots.CreateSnapshot(create(file_system_id)))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "Instance.IncorrectStatus"
    assert "expired" in error.message

    await api.file_systems.UpdateFileSystem(
        file_systems_pb2.UpdateFileSystemRequest(file_system_id=file_system_id, expired_time=in_hours(24 * 30))
    )
    response = await api.snapshots.CreateSnapshot(create(file_system_id))
    assert response.snapshot_id


async def test_status_change_takes_effect(api):
    file_system_id = await api.register()
    await api.file_systems.UpdateFileSystem(
        file_systems_pb2.UpdateFileSystemRequest(file_system_id=file_system_id, status="Stopped")
    )

    error = await error_details(api.snapshots.CreateSnapshot(create(file_system_id)))

    assert error.reason == "Instance.IncorrectStatus"


async def test_second_creation_conflicts(api, database_url):
    file_system_id = await api.register()
    await api.snapshots.CreateSnapshot(create(file_system_id))

    error = await error_details(api.snapshots.CreateSnapshot(create(file_system_id)))
    assert error.code == grpc.StatusCode.ABORTED
    assert error.reason == "OperationConflict.SnapshotCreating"
    assert error.retry_delay is not None

    await finish_creation(database_url, file_system_id)
    assert (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id


async def test_failed_snapshot_frees_creation_slot(api, database_url):
    file_system_id = await api.register()
    await api.snapshots.CreateSnapshot(create(file_system_id))
    await finish_creation(database_url, file_system_id, status="failed")

    response = await api.snapshots.CreateSnapshot(create(file_system_id))

    assert response.snapshot_id


async def test_fifty_concurrent_calls_one_success(api):
    file_system_id = await api.register()

    results = await asyncio.gather(
        *(api.snapshots.CreateSnapshot(create(file_system_id)) for _ in range(50)), return_exceptions=True
    )

    successes = [result for result in results if isinstance(result, snapshots_pb2.CreateSnapshotResponse)]
    failures = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(successes) == 1
    assert len(failures) == 49
    assert {failure.code() for failure in failures} == {grpc.StatusCode.ABORTED}
    assert all("OperationConflict.SnapshotCreating" in failure.details() for failure in failures)


async def test_limit_counts_every_snapshot(api, database_url):
    file_system_id = await api.register()
    await insert_finished_snapshots(database_url, file_system_id, 64)

    error = await error_details(api.snapshots.CreateSnapshot(create(file_system_id)))

    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "QuotaExceeded.Snapshot"
    assert error.quota_subjects == [f"file_system:{file_system_id}"]


async def test_concurrent_calls_at_63_make_one_64th(api, database_url):
    file_system_id = await api.register()
    await insert_finished_snapshots(database_url, file_system_id, 63)

    results = await asyncio.gather(
        *(api.snapshots.CreateSnapshot(create(file_system_id)) for _ in range(30)), return_exceptions=True
    )

    successes = [result for result in results if isinstance(result, snapshots_pb2.CreateSnapshotResponse)]
    codes = [result.code() for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(successes) == 1
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 29
    page = await api.snapshots.DescribeSnapshots(snapshots_pb2.DescribeSnapshotsRequest(file_system_id=file_system_id))
    assert page.total_count == 64


async def test_limit_checked_before_conflict(api, database_url):
    """With 63 finished and one in creation the file system is full: the limit is reported first."""
    file_system_id = await api.register()
    await insert_finished_snapshots(database_url, file_system_id, 63)
    await api.snapshots.CreateSnapshot(create(file_system_id))

    error = await error_details(api.snapshots.CreateSnapshot(create(file_system_id)))

    assert error.reason == "QuotaExceeded.Snapshot"


async def test_limit_is_a_setting(settings, database, database_url):
    async with running_api(dataclasses.replace(settings, snapshot_limit=2), database) as small_api:
        file_system_id = await small_api.register()
        await insert_finished_snapshots(database_url, file_system_id, 1)
        await small_api.snapshots.CreateSnapshot(create(file_system_id))
        await finish_creation(database_url, file_system_id)

        error = await error_details(small_api.snapshots.CreateSnapshot(create(file_system_id)))

    assert error.reason == "QuotaExceeded.Snapshot"
    assert "maximum of 2 snapshots" in error.message


async def test_database_forbids_two_in_creation(api, database_url):
    """The partial unique index holds even for a writer that skips the lock."""
    file_system_id = await api.register()
    await api.snapshots.CreateSnapshot(create(file_system_id))

    connection = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(
                """
                INSERT INTO snapshots (snapshot_id, file_system_id, status, retention_days, source_file_system_size)
                VALUES ($1, $2, 'progressing', -1, 100)
                """,
                ids.new_snapshot_id(),
                file_system_id,
            )
    finally:
        await connection.close()


async def test_client_token_replay_returns_same_id(api):
    file_system_id = await api.register()
    request = create(file_system_id, snapshot_name="Nightly", client_token="retry-123")

    first = await api.snapshots.CreateSnapshot(request)
    second = await api.snapshots.CreateSnapshot(request)

    assert second.snapshot_id == first.snapshot_id
    assert second.request_id != first.request_id
    page = await api.snapshots.DescribeSnapshots(snapshots_pb2.DescribeSnapshotsRequest(file_system_id=file_system_id))
    assert page.total_count == 1


async def test_client_token_replay_skips_later_checks(api, database_url):
    """A replay returns the same snapshot id even after the file system stopped or the snapshot finished."""
    file_system_id = await api.register()
    request = create(file_system_id, client_token="token-a")
    first = await api.snapshots.CreateSnapshot(request)
    await finish_creation(database_url, file_system_id)
    await api.file_systems.UpdateFileSystem(
        file_systems_pb2.UpdateFileSystemRequest(file_system_id=file_system_id, status="Stopped")
    )

    replay = await api.snapshots.CreateSnapshot(request)

    assert replay.snapshot_id == first.snapshot_id


async def test_client_token_concurrent_replays(api):
    file_system_id = await api.register()
    request = create(file_system_id, client_token="burst")

    responses = await asyncio.gather(*(api.snapshots.CreateSnapshot(request) for _ in range(20)))

    assert len({response.snapshot_id for response in responses}) == 1


@pytest.mark.parametrize(
    "changed",
    [{"snapshot_name": "Other"}, {"description": "changed"}, {"retention_days": 7}, {"retention_days": -1}],
    ids=["name", "description", "retention", "retention explicit default"],
)
async def test_client_token_mismatch(api, changed):
    file_system_id = await api.register()
    await api.snapshots.CreateSnapshot(
        create(file_system_id, snapshot_name="Nightly", description="first", retention_days=3, client_token="tok")
    )
    fields = {"snapshot_name": "Nightly", "description": "first", "retention_days": 3, **changed}

    error = await error_details(api.snapshots.CreateSnapshot(create(file_system_id, client_token="tok", **fields)))

    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "IdempotentParameterMismatch"
    assert f"different {next(iter(changed))}" in error.message


async def test_absent_retention_equals_minus_one_for_token(api):
    file_system_id = await api.register()
    first = await api.snapshots.CreateSnapshot(create(file_system_id, client_token="tok"))

    replay = await api.snapshots.CreateSnapshot(create(file_system_id, client_token="tok", retention_days=-1))

    assert replay.snapshot_id == first.snapshot_id


async def test_client_token_scoped_to_file_system(api):
    first_file_system = await api.register()
    second_file_system = await api.register()

    first = await api.snapshots.CreateSnapshot(create(first_file_system, client_token="shared"))
    second = await api.snapshots.CreateSnapshot(create(second_file_system, client_token="shared"))

    assert first.snapshot_id != second.snapshot_id


async def test_client_token_on_unknown_file_system(api):
    error = await error_details(api.snapshots.CreateSnapshot(create("extreme-nosuchfs", client_token="tok")))

    assert error.reason == "InvalidFileSystem.NotFound"


async def test_expiry_fixed_at_creation(api, database_url):
    file_system_id = await api.register()
    response = await api.snapshots.CreateSnapshot(create(file_system_id, retention_days=2))

    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            "SELECT expires_at - created_at AS period FROM snapshots WHERE snapshot_id = $1", response.snapshot_id
        )
    finally:
        await connection.close()

    assert row["period"] == datetime.timedelta(hours=48)
