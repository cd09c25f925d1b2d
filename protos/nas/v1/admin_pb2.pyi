from nas.v1 import snapshots_pb2 as _snapshots_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResetSnapshotRequest(_message.Message):
    __slots__ = ("snapshot_id", "action", "reason")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[ResetSnapshotRequest.Action]
        FAIL: _ClassVar[ResetSnapshotRequest.Action]
        REDRIVE: _ClassVar[ResetSnapshotRequest.Action]
    ACTION_UNSPECIFIED: ResetSnapshotRequest.Action
    FAIL: ResetSnapshotRequest.Action
    REDRIVE: ResetSnapshotRequest.Action
    SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    snapshot_id: str
    action: ResetSnapshotRequest.Action
    reason: str
    def __init__(self, snapshot_id: _Optional[str] = ..., action: _Optional[_Union[ResetSnapshotRequest.Action, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ResetSnapshotResponse(_message.Message):
    __slots__ = ("request_id", "snapshot")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    snapshot: _snapshots_pb2.Snapshot
    def __init__(self, request_id: _Optional[str] = ..., snapshot: _Optional[_Union[_snapshots_pb2.Snapshot, _Mapping]] = ...) -> None: ...
