"""The one table from domain errors to gRPC status codes, and the details sent.

A domain error is mapped by looking up its classes in method resolution
order, so a new subclass inherits its parent's status unless the table
names it. Every error status carries a `google.rpc.ErrorInfo` with domain
"nas", the NAS code as reason and the request id under `RequestId`, plus
`BadRequest` for parameter errors, `QuotaFailure` for the snapshot limit
and `RetryInfo` where a retry can succeed.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from service.errors import (
    AlreadyExists,
    FailedPrecondition,
    Forbidden,
    InvalidCredential,
    InvalidParameter,
    NasError,
    NotFound,
    ServiceUnavailable,
    SnapshotCreating,
    SnapshotQuotaExceeded,
    Throttled,
)

__all__ = ["ERROR_DOMAIN", "STATUS_CODES", "status_code_for", "to_rpc_status"]

ERROR_DOMAIN = "nas"

STATUS_CODES: dict[type[NasError], grpc.StatusCode] = {
    InvalidParameter: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidCredential: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    SnapshotQuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Throttled: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # ABORTED, as the CSI specification returns for an operation already
    # pending: the caller may retry once the creation has finished.
    SnapshotCreating: grpc.StatusCode.ABORTED,
    ServiceUnavailable: grpc.StatusCode.UNAVAILABLE,
    NasError: grpc.StatusCode.INTERNAL,
}

# Seconds a caller should wait before retrying, for errors worth retrying.
_RETRY_DELAYS: dict[type[NasError], int] = {
    ServiceUnavailable: 1,
    SnapshotCreating: 5,
}


def status_code_for(error: NasError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    raise AssertionError("NasError is in the table, so the loop always returns")


def to_rpc_status(error: NasError, request_id: str) -> status_pb2.Status:
    """Build the google.rpc.Status for an error, its message prefixed by the NAS code."""
    code = status_code_for(error)
    details = [
        error_details_pb2.ErrorInfo(reason=error.code, domain=ERROR_DOMAIN, metadata={"RequestId": request_id}),
    ]

    if isinstance(error, InvalidParameter):
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[error_details_pb2.BadRequest.FieldViolation(field=error.field, description=error.message)]
            )
        )
    if isinstance(error, SnapshotQuotaExceeded):
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=f"file_system:{error.file_system_id}",
                        description=f"at most {error.limit} snapshots per file system",
                    )
                ]
            )
        )
    delay = getattr(error, "retry_after", None)
    if delay is None:
        delay = next((_RETRY_DELAYS[cls] for cls in type(error).__mro__ if cls in _RETRY_DELAYS), None)
    if delay is not None:
        details.append(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=delay)))

    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=f"{error.code}: {error.message}")
    for detail in details:
        status.details.add().Pack(detail)
    return status
