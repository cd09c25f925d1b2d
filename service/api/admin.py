"""nas.v1.AdminService: operator recovery of stuck snapshots."""

from __future__ import annotations

import grpc

from nas.v1 import admin_pb2, admin_pb2_grpc
from service.api.convert import snapshot_message
from service.api.interceptor import current_request_id
from service.domain import admin
from service.domain.validation import check_snapshot_id, check_text_field
from service.errors import InvalidParameter
from service.store.database import Database

__all__ = ["AdminService"]

_ACTIONS = {
    admin_pb2.ResetSnapshotRequest.FAIL: admin.fail_snapshot,
    admin_pb2.ResetSnapshotRequest.REDRIVE: admin.redrive_snapshot,
}


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, database: Database) -> None:
        self._database = database

    async def ResetSnapshot(
        self, request: admin_pb2.ResetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ResetSnapshotResponse:
        snapshot_id = check_snapshot_id(request.snapshot_id)
        action = _ACTIONS.get(request.action)
        if action is None:
            raise InvalidParameter("action", "Action", "The action must be FAIL or REDRIVE.")
        check_text_field(request.reason, "reason", "Reason", 256)

        record = await action(self._database, snapshot_id, request.reason)
        return admin_pb2.ResetSnapshotResponse(request_id=current_request_id(), snapshot=snapshot_message(record))
