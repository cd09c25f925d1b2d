"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = ["ErrorDetails", "error_details", "new_file_system_id", "rabbitmqctl", "wait_until"]


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
