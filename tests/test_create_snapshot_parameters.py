"""CreateSnapshot parameter rules, each checked through the real API."""

from __future__ import annotations

import grpc
import pytest

from nas.v1 import snapshots_pb2
from service.logs import ContextFilter
from tests.support import error_details, new_file_system_id

INVALID = grpc.StatusCode.INVALID_ARGUMENT

# (case id, request fields, NAS code, field in BadRequest)
BAD_REQUESTS = [
    ("missing id", {"file_system_id": ""}, "MissingParameter.FileSystemId", "file_system_id"),
    ("id with slash", {"file_system_id": "extreme/../etc"}, "InvalidParameter.FileSystemId", "file_system_id"),
    ("id of dots", {"file_system_id": ".."}, "InvalidParameter.FileSystemId", "file_system_id"),
    ("id leading hyphen", {"file_system_id": "-extreme"}, "InvalidParameter.FileSystemId", "file_system_id"),
    ("id too long", {"file_system_id": "e" * 65}, "InvalidParameter.FileSystemId", "file_system_id"),
    ("id with newline", {"file_system_id": "extreme-1\n"}, "InvalidParameter.FileSystemId", "file_system_id"),
    ("id non-ascii", {"file_system_id": "extréme-1"}, "InvalidParameter.FileSystemId", "file_system_id"),
    ("id with NUL", {"file_system_id": "extreme\x00"}, "InvalidParameter.FileSystemId", "file_system_id"),
    ("name one char", {"snapshot_name": "a"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name 129 chars", {"snapshot_name": "a" * 129}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name leading digit", {"snapshot_name": "1abc"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name leading hyphen", {"snapshot_name": "-abc"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name auto", {"snapshot_name": "auto"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name auto prefix", {"snapshot_name": "auto_20140418_1"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name AUTO upper", {"snapshot_name": "AUTOmatic"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name http", {"snapshot_name": "http://x"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name https", {"snapshot_name": "https://x"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name space", {"snapshot_name": "my snap"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name dot", {"snapshot_name": "snap.1"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name slash", {"snapshot_name": "snap/1"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name NUL", {"snapshot_name": "snap\x00x"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name emoji", {"snapshot_name": "snap😀"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("name RTL mark", {"snapshot_name": "ab\u200fcd"}, "InvalidParameter.SnapshotName", "snapshot_name"),
    ("description one char", {"description": "x"}, "InvalidParameter.Description", "description"),
    ("description 257 chars", {"description": "x" * 257}, "InvalidParameter.Description", "description"),
    ("description http", {"description": "http://example"}, "InvalidParameter.Description", "description"),
    ("description HTTPS", {"description": "HTTPS://example"}, "InvalidParameter.Description", "description"),
    ("description NUL", {"description": "ab\x00cd"}, "InvalidParameter.Description", "description"),
    ("description escape", {"description": "ab\x1b[31mcd"}, "InvalidParameter.Description", "description"),
    ("description newline", {"description": "line\nbreak"}, "InvalidParameter.Description", "description"),
    ("retention zero", {"retention_days": 0}, "InvalidParameter.RetentionDays", "retention_days"),
    ("retention minus two", {"retention_days": -2}, "InvalidParameter.RetentionDays", "retention_days"),
    ("retention 65537", {"retention_days": 65537}, "InvalidParameter.RetentionDays", "retention_days"),
    ("retention int32 min", {"retention_days": -(2**31)}, "InvalidParameter.RetentionDays", "retention_days"),
    ("token 65 chars", {"client_token": "t" * 65}, "InvalidParameter.ClientToken", "client_token"),
    ("token non-ascii", {"client_token": "tökén"}, "InvalidParameter.ClientToken", "client_token"),
    ("token tab", {"client_token": "a\tb"}, "InvalidParameter.ClientToken", "client_token"),
]

GOOD_REQUESTS = [
    ("all defaults", {}),
    ("name two chars", {"snapshot_name": "ab"}),
    ("name 128 chars", {"snapshot_name": "a" * 128}),
    ("name every allowed character", {"snapshot_name": "Finance:Q4_2026-v1"}),
    ("name chinese", {"snapshot_name": "财务快照_1"}),
    ("name autumn-like but not auto", {"snapshot_name": "autxmn"}),
    ("name containing auto", {"snapshot_name": "myauto"}),
    ("description two chars", {"description": "ok"}),
    ("description 256 chars", {"description": "d" * 256}),
    ("description unicode", {"description": "Finance department, 财务部 ✓"}),
    ("description with url inside", {"description": "see http://example"}),
    ("retention -1", {"retention_days": -1}),
    ("retention 1", {"retention_days": 1}),
    ("retention 65536", {"retention_days": 65536}),
    ("token 64 chars", {"client_token": "t" * 64}),
    ("token printable ascii", {"client_token": "a b~!@#$%^&*()"}),
]


@pytest.mark.parametrize(("fields", "code", "field"), [case[1:] for case in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
async def test_bad_parameter_rejected(api, fields, code, field):
    file_system_id = await api.register()
    request = {"file_system_id": file_system_id, **fields}

    error = await error_details(api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(**request)))

    assert error.code == INVALID
    assert error.reason == code
    assert error.domain == "nas"
    assert error.field_violations == [field]
    assert error.message.startswith(code + ": ")
    assert len(error.request_id) == 36


@pytest.mark.parametrize("fields", [case[1] for case in GOOD_REQUESTS], ids=[c[0] for c in GOOD_REQUESTS])
async def test_good_parameters_accepted(api, fields):
    file_system_id = await api.register()

    response = await api.snapshots.CreateSnapshot(
        snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id, **fields)
    )

    described = await api.snapshots.DescribeSnapshots(
        snapshots_pb2.DescribeSnapshotsRequest(snapshot_ids=[response.snapshot_id])
    )
    snapshot = described.snapshots[0]
    assert snapshot.snapshot_name == fields.get("snapshot_name", "")
    assert snapshot.description == fields.get("description", "")
    assert snapshot.retention_days == fields.get("retention_days", -1)


async def test_parameters_checked_before_existence(api):
    """A malformed request on an unknown file system is a parameter error, not NOT_FOUND."""
    request = snapshots_pb2.CreateSnapshotRequest(file_system_id=new_file_system_id(), snapshot_name="x")

    error = await error_details(api.snapshots.CreateSnapshot(request))

    assert error.reason == "InvalidParameter.SnapshotName"


async def test_unknown_file_system_not_found(api):
    request = snapshots_pb2.CreateSnapshotRequest(file_system_id=new_file_system_id())

    error = await error_details(api.snapshots.CreateSnapshot(request))

    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "InvalidFileSystem.NotFound"


async def test_unparsable_bytes_rejected(api):
    """Bytes that are not a CreateSnapshotRequest get INVALID_ARGUMENT, not UNKNOWN."""
    raw_call = api.channel.unary_unary("/nas.v1.SnapshotService/CreateSnapshot")

    error = await error_details(raw_call(b"\xff\xff\xff\xff"))

    assert error.code == INVALID
    assert error.reason == "InvalidParameter"
    assert error.request_id


async def test_rejection_logged_with_file_system_id(api, caplog):
    caplog.handler.addFilter(ContextFilter())
    file_system_id = new_file_system_id()

    await error_details(api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id)))

    records = [record for record in caplog.records if record.name == "service.api.interceptor"]
    assert any(getattr(record, "file_system_id", "") == file_system_id for record in records)
