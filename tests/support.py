"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from google.rpc import error_details_pb2, status_pb2

from nas.v1 import snapshots_pb2

__all__ = [
    "ErrorDetails",
    "describe_one",
    "error_details",
    "new_file_system_id",
    "provisioned_file_system",
    "rabbitmqctl",
    "wait_for_status",
    "wait_until",
]


def new_file_system_id(prefix: str = "extreme") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def rabbitmqctl(*arguments: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *arguments], check=True, capture_output=True, timeout=60)


class ErrorDetails:
    """The parts of a rich gRPC error status that tests check."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        self.code = error.code()
        self.message = error.details() or ""
        self.reason = ""
        self.domain = ""
        self.request_id = ""
        self.field_violations: list[str] = []
        self.quota_subjects: list[str] = []
        self.retry_delay: int | None = None

        raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
        if raw is None:
            return
        status = status_pb2.Status.FromString(raw)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                self.reason = info.reason
                self.domain = info.domain
                self.request_id = info.metadata.get("RequestId", "")
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                self.field_violations = [violation.field for violation in bad.field_violations]
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                quota = error_details_pb2.QuotaFailure()
                detail.Unpack(quota)
                self.quota_subjects = [violation.subject for violation in quota.violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                self.retry_delay = retry.retry_delay.seconds


async def error_details(call: Awaitable[object]) -> ErrorDetails:
    """Await a call that must fail, and return its error details."""
    try:
        response = await call
    except grpc.aio.AioRpcError as error:
        return ErrorDetails(error)
    raise AssertionError(f"the call succeeded with {response!r}")


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def describe_one(api, snapshot_id: str) -> snapshots_pb2.Snapshot:
    page = await api.snapshots.DescribeSnapshots(snapshots_pb2.DescribeSnapshotsRequest(snapshot_ids=[snapshot_id]))
    return page.snapshots[0]


async def wait_for_status(api, snapshot_id: str, timeout: float = 30.0) -> snapshots_pb2.Snapshot:
    async def finished() -> bool:
        return (await describe_one(api, snapshot_id)).status != "progressing"

    await wait_until(finished, timeout=timeout, what=f"snapshot {snapshot_id} to finish")
    return await describe_one(api, snapshot_id)


async def provisioned_file_system(api, data_root: Path) -> tuple[str, Path]:
    file_system_id = await api.register()
    directory = data_root / "file-systems" / file_system_id

    async def exists() -> bool:
        return directory.is_dir()

    await wait_until(exists, what=f"directory of {file_system_id}")
    return file_system_id, directory
