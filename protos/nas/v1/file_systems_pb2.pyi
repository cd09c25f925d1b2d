import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterFileSystemRequest(_message.Message):
    __slots__ = ("file_system_id", "file_system_type", "status", "capacity", "expired_time", "account")
    FILE_SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_SYSTEM_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_TIME_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    file_system_id: str
    file_system_type: str
    status: str
    capacity: int
    expired_time: _timestamp_pb2.Timestamp
    account: str
    def __init__(self, file_system_id: _Optional[str] = ..., file_system_type: _Optional[str] = ..., status: _Optional[str] = ..., capacity: _Optional[int] = ..., expired_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., account: _Optional[str] = ...) -> None: ...

class RegisterFileSystemResponse(_message.Message):
    __slots__ = ("request_id", "file_system")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_SYSTEM_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    file_system: FileSystem
    def __init__(self, request_id: _Optional[str] = ..., file_system: _Optional[_Union[FileSystem, _Mapping]] = ...) -> None: ...

class UpdateFileSystemRequest(_message.Message):
    __slots__ = ("file_system_id", "status", "expired_time", "clear_expired_time")
    FILE_SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_TIME_FIELD_NUMBER: _ClassVar[int]
    CLEAR_EXPIRED_TIME_FIELD_NUMBER: _ClassVar[int]
    file_system_id: str
    status: str
    expired_time: _timestamp_pb2.Timestamp
    clear_expired_time: bool
    def __init__(self, file_system_id: _Optional[str] = ..., status: _Optional[str] = ..., expired_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., clear_expired_time: _Optional[bool] = ...) -> None: ...

class UpdateFileSystemResponse(_message.Message):
    __slots__ = ("request_id", "file_system")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_SYSTEM_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    file_system: FileSystem
    def __init__(self, request_id: _Optional[str] = ..., file_system: _Optional[_Union[FileSystem, _Mapping]] = ...) -> None: ...

class DescribeFileSystemsRequest(_message.Message):
    __slots__ = ("file_system_ids", "page_number", "page_size")
    FILE_SYSTEM_IDS_FIELD_NUMBER: _ClassVar[int]
    PAGE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    file_system_ids: _containers.RepeatedScalarFieldContainer[str]
    page_number: int
    page_size: int
    def __init__(self, file_system_ids: _Optional[_Iterable[str]] = ..., page_number: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class DescribeFileSystemsResponse(_message.Message):
    __slots__ = ("request_id", "total_count", "page_number", "page_size", "file_systems")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAGE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    FILE_SYSTEMS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    total_count: int
    page_number: int
    page_size: int
    file_systems: _containers.RepeatedCompositeFieldContainer[FileSystem]
    def __init__(self, request_id: _Optional[str] = ..., total_count: _Optional[int] = ..., page_number: _Optional[int] = ..., page_size: _Optional[int] = ..., file_systems: _Optional[_Iterable[_Union[FileSystem, _Mapping]]] = ...) -> None: ...

class ReleaseFileSystemRequest(_message.Message):
    __slots__ = ("file_system_id",)
    FILE_SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    file_system_id: str
    def __init__(self, file_system_id: _Optional[str] = ...) -> None: ...

class ReleaseFileSystemResponse(_message.Message):
    __slots__ = ("request_id", "deleted_snapshot_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_SNAPSHOT_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    deleted_snapshot_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., deleted_snapshot_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class FileSystem(_message.Message):
    __slots__ = ("file_system_id", "file_system_type", "status", "capacity", "expired_time", "expired", "create_time", "account")
    FILE_SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    FILE_SYSTEM_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    file_system_id: str
    file_system_type: str
    status: str
    capacity: int
    expired_time: _timestamp_pb2.Timestamp
    expired: bool
    create_time: _timestamp_pb2.Timestamp
    account: str
    def __init__(self, file_system_id: _Optional[str] = ..., file_system_type: _Optional[str] = ..., status: _Optional[str] = ..., capacity: _Optional[int] = ..., expired_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expired: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., account: _Optional[str] = ...) -> None: ...
