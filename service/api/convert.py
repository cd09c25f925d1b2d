"""Conversions between store records and protobuf messages."""

from __future__ import annotations

import datetime

from google.protobuf import timestamp_pb2

from nas.v1 import file_systems_pb2, snapshots_pb2
from service.errors import InvalidParameter
from service.store.file_systems import FileSystemRecord
from service.store.snapshots import SnapshotRecord

__all__ = ["file_system_message", "optional_time", "snapshot_message", "timestamp"]


def timestamp(value: datetime.datetime) -> timestamp_pb2.Timestamp:
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def optional_time(
    message: timestamp_pb2.Timestamp, present: bool, field: str, parameter: str
) -> datetime.datetime | None:
    """Read an optional request Timestamp as an aware UTC datetime, at microsecond precision."""
    if not present:
        return None
    try:
        return message.ToDatetime(tzinfo=datetime.timezone.utc)
    except (ValueError, OverflowError):
        raise InvalidParameter(
            field, parameter, f"The {field} is out of range; use a time between years 1 and 9999."
        ) from None


def snapshot_message(record: SnapshotRecord) -> snapshots_pb2.Snapshot:
    message = snapshots_pb2.Snapshot(
        snapshot_id=record.snapshot_id,
        snapshot_name=record.snapshot_name,
        description=record.description,
        status=record.status,
        progress=record.progress,
        remain_time=record.remain_time if record.status == "progressing" else 0,
        retention_days=record.retention_days,
        snapshot_type=record.snapshot_type,
        source_file_system_id=record.file_system_id,
        source_file_system_size=record.source_file_system_size,
        size_bytes=record.size_bytes,
        create_time=timestamp(record.created_at),
        status_reason=record.status_reason,
    )
    if record.completed_at is not None:
        message.completed_time.CopyFrom(timestamp(record.completed_at))
    if record.expires_at is not None:
        message.expire_time.CopyFrom(timestamp(record.expires_at))
    return message


def file_system_message(record: FileSystemRecord) -> file_systems_pb2.FileSystem:
    message = file_systems_pb2.FileSystem(
        file_system_id=record.file_system_id,
        account=record.account,
        file_system_type=record.file_system_type,
        status=record.status,
        capacity=record.capacity_gib,
        expired=record.expired,
        create_time=timestamp(record.created_at),
    )
    if record.expired_time is not None:
        message.expired_time.CopyFrom(timestamp(record.expired_time))
    return message
