"""FileSystemService: registration, updates and listing."""

from __future__ import annotations

import datetime

import grpc
import pytest
from google.protobuf import timestamp_pb2

from nas.v1 import file_systems_pb2
from tests.support import error_details, new_file_system_id


def register(**fields: object) -> file_systems_pb2.RegisterFileSystemRequest:
    fields.setdefault("file_system_id", new_file_system_id())
    fields.setdefault("capacity", 100)
    return file_systems_pb2.RegisterFileSystemRequest(**fields)


def at(year: int) -> timestamp_pb2.Timestamp:
    moment = timestamp_pb2.Timestamp()
    moment.FromDatetime(datetime.datetime(year, 1, 1, tzinfo=datetime.timezone.utc))
    return moment


async def test_register_defaults(api):
    response = await api.file_systems.RegisterFileSystem(register())

    file_system = response.file_system
    assert file_system.file_system_type == "extreme"
    assert file_system.status == "Running"
    assert file_system.capacity == 100
    assert not file_system.HasField("expired_time")
    assert not file_system.expired
    assert response.request_id


async def test_register_again_same_values(api):
    request = register(file_system_type="standard", status="Stopped", capacity=500, expired_time=at(2030))

    first = await api.file_systems.RegisterFileSystem(request)
    second = await api.file_systems.RegisterFileSystem(request)

    assert second.file_system == first.file_system


@pytest.mark.parametrize(
    "changed",
    [{"file_system_type": "cpfs"}, {"status": "Stopped"}, {"capacity": 200}, {"expired_time": at(2031)}],
    ids=["type", "status", "capacity", "expired time"],
)
async def test_register_again_other_values(api, changed):
    request = register(expired_time=at(2030))
    await api.file_systems.RegisterFileSystem(request)
    fields = {
        "file_system_id": request.file_system_id,
        "capacity": 100,
        "expired_time": at(2030),
        **changed,
    }

    error = await error_details(api.file_systems.RegisterFileSystem(register(**fields)))

    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "InvalidFileSystem.AlreadyExists"
    assert f"different {next(iter(changed))}" in error.message


BAD_REGISTRATIONS = [
    ("missing id", {"file_system_id": ""}, "MissingParameter.FileSystemId"),
    ("bad id", {"file_system_id": "a/b"}, "InvalidParameter.FileSystemId"),
    ("bad type", {"file_system_type": "Extreme"}, "InvalidParameter.FileSystemType"),
    ("bad status", {"status": "running"}, "InvalidParameter.Status"),
    ("missing capacity", {"capacity": 0}, "MissingParameter.Capacity"),
    ("negative capacity", {"capacity": -5}, "InvalidParameter.Capacity"),
    ("huge capacity", {"capacity": 2**62}, "InvalidParameter.Capacity"),
]


@pytest.mark.parametrize(("fields", "code"), [c[1:] for c in BAD_REGISTRATIONS], ids=[c[0] for c in BAD_REGISTRATIONS])
async def test_bad_registration_rejected(api, fields, code):
    error = await error_details(api.file_systems.RegisterFileSystem(register(**fields)))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == code


async def test_expired_time_out_of_range(api):
    request = register()
    request.expired_time.seconds = 300_000_000_000

    error = await error_details(api.file_systems.RegisterFileSystem(request))

    assert error.reason == "InvalidParameter.ExpiredTime"


async def test_update_status_and_expiry(api):
    file_system_id = await api.register()

    updated = await api.file_systems.UpdateFileSystem(
        file_systems_pb2.UpdateFileSystemRequest(file_system_id=file_system_id, status="Extending", expired_time=at(2001))
    )

    assert updated.file_system.status == "Extending"
    assert updated.file_system.expired
    cleared = await api.file_systems.UpdateFileSystem(
        file_systems_pb2.UpdateFileSystemRequest(file_system_id=file_system_id, clear_expired_time=True)
    )
    assert cleared.file_system.status == "Extending"
    assert not cleared.file_system.HasField("expired_time")
    assert not cleared.file_system.expired


async def test_update_unknown_not_found(api):
    request = file_systems_pb2.UpdateFileSystemRequest(file_system_id=new_file_system_id(), status="Running")

    error = await error_details(api.file_systems.UpdateFileSystem(request))

    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "InvalidFileSystem.NotFound"


async def test_update_both_expiry_fields_rejected(api):
    file_system_id = await api.register()
    request = file_systems_pb2.UpdateFileSystemRequest(
        file_system_id=file_system_id, expired_time=at(2030), clear_expired_time=True
    )

    error = await error_details(api.file_systems.UpdateFileSystem(request))

    assert error.reason == "InvalidParameter.ClearExpiredTime"


async def test_describe_by_ids(api):
    first = await api.register()
    second = await api.register(status="Stopped")

    page = await api.file_systems.DescribeFileSystems(
        file_systems_pb2.DescribeFileSystemsRequest(file_system_ids=[first, second, "extreme-unknown00"])
    )

    assert page.total_count == 2
    assert {fs.file_system_id: fs.status for fs in page.file_systems} == {first: "Running", second: "Stopped"}


async def test_describe_bad_id_rejected(api):
    request = file_systems_pb2.DescribeFileSystemsRequest(file_system_ids=["bad id"])

    error = await error_details(api.file_systems.DescribeFileSystems(request))

    assert error.reason == "InvalidParameter.FileSystemIds"
