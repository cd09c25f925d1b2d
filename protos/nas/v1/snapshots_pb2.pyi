import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateSnapshotRequest(_message.Message):
    __slots__ = ("file_system_id", "snapshot_name", "description", "retention_days", "client_token")
    FILE_SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    file_system_id: str
    snapshot_name: str
    description: str
    retention_days: int
    client_token: str
    def __init__(self, file_system_id: _Optional[str] = ..., snapshot_name: _Optional[str] = ..., description: _Optional[str] = ..., retention_days: _Optional[int] = ..., client_token: _Optional[str] = ...) -> None: ...

class CreateSnapshotResponse(_message.Message):
    __slots__ = ("request_id", "snapshot_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    snapshot_id: str
    def __init__(self, request_id: _Optional[str] = ..., snapshot_id: _Optional[str] = ...) -> None: ...

class DescribeSnapshotsRequest(_message.Message):
    __slots__ = ("file_system_id", "snapshot_ids", "snapshot_name", "snapshot_type", "status", "page_number", "page_size")
    FILE_SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_IDS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_NAME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    file_system_id: str
    snapshot_ids: _containers.RepeatedScalarFieldContainer[str]
    snapshot_name: str
    snapshot_type: str
    status: str
    page_number: int
    page_size: int
    def __init__(self, file_system_id: _Optional[str] = ..., snapshot_ids: _Optional[_Iterable[str]] = ..., snapshot_name: _Optional[str] = ..., snapshot_type: _Optional[str] = ..., status: _Optional[str] = ..., page_number: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class DescribeSnapshotsResponse(_message.Message):
    __slots__ = ("request_id", "total_count", "page_number", "page_size", "snapshots")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAGE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    total_count: int
    page_number: int
    page_size: int
    snapshots: _containers.RepeatedCompositeFieldContainer[Snapshot]
    def __init__(self, request_id: _Optional[str] = ..., total_count: _Optional[int] = ..., page_number: _Optional[int] = ..., page_size: _Optional[int] = ..., snapshots: _Optional[_Iterable[_Union[Snapshot, _Mapping]]] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("snapshot_id", "snapshot_name", "description", "status", "progress", "remain_time", "retention_days", "snapshot_type", "source_file_system_id", "source_file_system_size", "size_bytes", "create_time", "completed_time", "status_reason", "expire_time")
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    REMAIN_TIME_FIELD_NUMBER: _ClassVar[int]
    RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FILE_SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FILE_SYSTEM_SIZE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_TIME_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    snapshot_name: str
    description: str
    status: str
    progress: int
    remain_time: int
    retention_days: int
    snapshot_type: str
    source_file_system_id: str
    source_file_system_size: int
    size_bytes: int
    create_time: _timestamp_pb2.Timestamp
    completed_time: _timestamp_pb2.Timestamp
    status_reason: str
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, snapshot_id: _Optional[str] = ..., snapshot_name: _Optional[str] = ..., description: _Optional[str] = ..., status: _Optional[str] = ..., progress: _Optional[int] = ..., remain_time: _Optional[int] = ..., retention_days: _Optional[int] = ..., snapshot_type: _Optional[str] = ..., source_file_system_id: _Optional[str] = ..., source_file_system_size: _Optional[int] = ..., size_bytes: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status_reason: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeleteSnapshotRequest(_message.Message):
    __slots__ = ("snapshot_id",)
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    def __init__(self, snapshot_id: _Optional[str] = ...) -> None: ...

class DeleteSnapshotResponse(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...
