"""nas.v1.FileSystemService: the internal API of the system that owns file systems."""

from __future__ import annotations

import grpc

from nas.v1 import file_systems_pb2, file_systems_pb2_grpc
from service.api.convert import file_system_message, optional_time
from service.api.interceptor import current_request_id
from service.domain import file_systems as file_system_rules
from service.domain.validation import check_file_system_id, check_page
from service.logs import bind_ids
from service.store.database import Database

__all__ = ["FileSystemService"]


class FileSystemService(file_systems_pb2_grpc.FileSystemServiceServicer):
    def __init__(self, database: Database) -> None:
        self._database = database

    async def RegisterFileSystem(
        self, request: file_systems_pb2.RegisterFileSystemRequest, context: grpc.aio.ServicerContext
    ) -> file_systems_pb2.RegisterFileSystemResponse:
        spec = file_system_rules.validate_registration(
            file_system_id=request.file_system_id,
            account=request.account,
            file_system_type=request.file_system_type,
            status=request.status,
            capacity_gib=request.capacity,
            expired_time=optional_time(
                request.expired_time, request.HasField("expired_time"), "expired_time", "ExpiredTime"
            ),
        )
        with bind_ids(file_system_id=spec.file_system_id):
            record = await file_system_rules.register_file_system(self._database, spec)
        return file_systems_pb2.RegisterFileSystemResponse(
            request_id=current_request_id(), file_system=file_system_message(record)
        )

    async def UpdateFileSystem(
        self, request: file_systems_pb2.UpdateFileSystemRequest, context: grpc.aio.ServicerContext
    ) -> file_systems_pb2.UpdateFileSystemResponse:
        change = file_system_rules.validate_update(
            file_system_id=request.file_system_id,
            status=request.status if request.HasField("status") else None,
            expired_time=optional_time(
                request.expired_time, request.HasField("expired_time"), "expired_time", "ExpiredTime"
            ),
            clear_expired_time=request.clear_expired_time,
        )
        with bind_ids(file_system_id=change.file_system_id):
            record = await file_system_rules.update_file_system(self._database, change)
        return file_systems_pb2.UpdateFileSystemResponse(
            request_id=current_request_id(), file_system=file_system_message(record)
        )

    async def DescribeFileSystems(
        self, request: file_systems_pb2.DescribeFileSystemsRequest, context: grpc.aio.ServicerContext
    ) -> file_systems_pb2.DescribeFileSystemsResponse:
        page = check_page(
            request.page_number if request.HasField("page_number") else None,
            request.page_size if request.HasField("page_size") else None,
        )
        total, records = await file_system_rules.describe_file_systems(
            self._database, list(request.file_system_ids), page
        )
        return file_systems_pb2.DescribeFileSystemsResponse(
            request_id=current_request_id(),
            total_count=total,
            page_number=page.number,
            page_size=page.size,
            file_systems=[file_system_message(record) for record in records],
        )

    async def ReleaseFileSystem(
        self, request: file_systems_pb2.ReleaseFileSystemRequest, context: grpc.aio.ServicerContext
    ) -> file_systems_pb2.ReleaseFileSystemResponse:
        file_system_id = check_file_system_id(request.file_system_id)
        with bind_ids(file_system_id=file_system_id):
            deleted = await file_system_rules.release_file_system(self._database, file_system_id)
        return file_systems_pb2.ReleaseFileSystemResponse(
            request_id=current_request_id(), deleted_snapshot_ids=deleted
        )
