"""nas.v1.SnapshotService: CreateSnapshot, DescribeSnapshots and DeleteSnapshot."""

from __future__ import annotations

import logging

import grpc

from nas.v1 import snapshots_pb2, snapshots_pb2_grpc
from service.api.convert import snapshot_message
from service.api.interceptor import current_caller, current_request_id
from service.domain import snapshots as snapshot_rules
from service.domain.throttling import ThrottlePolicy
from service.domain.validation import (
    SNAPSHOT_STATUSES,
    SNAPSHOT_TYPES,
    check_file_system_id,
    check_page,
    check_snapshot_id,
    check_snapshot_id_filter,
    check_snapshot_name_filter,
    shown,
    validate_create_snapshot,
)
from service.errors import InvalidParameter
from service.logs import bind_ids
from service.store.database import Database
from service.store.snapshots import SnapshotFilter

__all__ = ["SnapshotService"]

logger = logging.getLogger(__name__)


class SnapshotService(snapshots_pb2_grpc.SnapshotServiceServicer):
    def __init__(self, database: Database, snapshot_limit: int, throttle: ThrottlePolicy) -> None:
        self._database = database
        self._snapshot_limit = snapshot_limit
        self._throttle = throttle

    async def CreateSnapshot(
        self, request: snapshots_pb2.CreateSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> snapshots_pb2.CreateSnapshotResponse:
        params = validate_create_snapshot(
            file_system_id=request.file_system_id,
            snapshot_name=request.snapshot_name,
            description=request.description,
            retention_days=request.retention_days if request.HasField("retention_days") else None,
            client_token=request.client_token,
        )

        with bind_ids(file_system_id=params.file_system_id):
            admission = await snapshot_rules.admit_snapshot(
                self._database, params, self._snapshot_limit, current_caller().account, self._throttle
            )
            if not admission.replayed:
                with bind_ids(snapshot_id=admission.snapshot_id):
                    if params.retention_days == -1:
                        logger.info("Accepted snapshot, kept until deleted")
                    else:
                        logger.info("Accepted snapshot, kept for %d days", params.retention_days)

        return snapshots_pb2.CreateSnapshotResponse(request_id=current_request_id(), snapshot_id=admission.snapshot_id)

    async def DescribeSnapshots(
        self, request: snapshots_pb2.DescribeSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> snapshots_pb2.DescribeSnapshotsResponse:
        where = SnapshotFilter(
            account=current_caller().account,
            file_system_id=check_file_system_id(request.file_system_id) if request.file_system_id else None,
            snapshot_ids=check_snapshot_id_filter(list(request.snapshot_ids)) if request.snapshot_ids else None,
            snapshot_name=check_snapshot_name_filter(request.snapshot_name),
            snapshot_type=_choice(request.snapshot_type, SNAPSHOT_TYPES, "snapshot_type", "SnapshotType"),
            status=_choice(request.status, SNAPSHOT_STATUSES, "status", "Status"),
        )
        page = check_page(
            request.page_number if request.HasField("page_number") else None,
            request.page_size if request.HasField("page_size") else None,
        )

        total, records = await snapshot_rules.describe_snapshots(self._database, where, page)

        return snapshots_pb2.DescribeSnapshotsResponse(
            request_id=current_request_id(),
            total_count=total,
            page_number=page.number,
            page_size=page.size,
            snapshots=[snapshot_message(record) for record in records],
        )

    async def DeleteSnapshot(
        self, request: snapshots_pb2.DeleteSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> snapshots_pb2.DeleteSnapshotResponse:
        snapshot_id = check_snapshot_id(request.snapshot_id)
        with bind_ids(snapshot_id=snapshot_id):
            await snapshot_rules.delete_snapshot(self._database, snapshot_id, current_caller().account)
        return snapshots_pb2.DeleteSnapshotResponse(request_id=current_request_id())


def _choice(value: str, allowed: tuple[str, ...], field: str, parameter: str) -> str | None:
    """Return a filter value, or None for "all" and the empty default."""
    if value in ("", "all"):
        return None
    if value not in allowed:
        raise InvalidParameter(
            field, parameter, f"The {field} {shown(value)} is invalid; use one of {', '.join((*allowed, 'all'))}."
        )
    return value
