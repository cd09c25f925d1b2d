"""Domain errors, each carrying the NAS error code a caller receives.

Every error a caller may receive is one of these classes. The API layer
maps each class to a gRPC status code in one table (`service.api.status`),
and anything else becomes `InternalError`:

    NasError
    ├── InvalidParameter               INVALID_ARGUMENT  InvalidParameter.<Field>
    │   ├── MissingParameter           INVALID_ARGUMENT  MissingParameter.<Field>
    │   └── MalformedRequest           INVALID_ARGUMENT  InvalidParameter
    ├── NotFound                       NOT_FOUND
    │   ├── FileSystemNotFound                           InvalidFileSystem.NotFound
    │   └── SnapshotNotFound                             InvalidSnapshot.NotFound
    ├── AlreadyExists                  ALREADY_EXISTS
    │   ├── FileSystemAlreadyExists                      InvalidFileSystem.AlreadyExists
    │   └── IdempotentParameterMismatch                  IdempotentParameterMismatch
    ├── FailedPrecondition             FAILED_PRECONDITION
    │   ├── FileSystemTypeNotSupported                   InvalidFileSystemType.NotSupported
    │   ├── IncorrectFileSystemStatus                    Instance.IncorrectStatus
    │   └── IncorrectSnapshotStatus                      InvalidSnapshot.IncorrectStatus
    ├── InvalidCredential              UNAUTHENTICATED   InvalidCredential
    ├── Forbidden                      PERMISSION_DENIED Forbidden.RAM
    ├── SnapshotQuotaExceeded          RESOURCE_EXHAUSTED QuotaExceeded.Snapshot
    ├── Throttled                      RESOURCE_EXHAUSTED Throttling.User
    ├── SnapshotCreating               ABORTED           OperationConflict.SnapshotCreating
    ├── ServiceUnavailable             UNAVAILABLE       ServiceUnavailable
    └── InternalError                  INTERNAL          InternalError

Messages are written for the caller: they name the value that failed and
never contain internal details such as SQL or host names.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "FileSystemAlreadyExists",
    "FileSystemNotFound",
    "FileSystemTypeNotSupported",
    "Forbidden",
    "IdempotentParameterMismatch",
    "IncorrectFileSystemStatus",
    "IncorrectSnapshotStatus",
    "InternalError",
    "InvalidCredential",
    "InvalidParameter",
    "MalformedRequest",
    "MissingParameter",
    "NasError",
    "NotFound",
    "ServiceUnavailable",
    "SnapshotCreating",
    "SnapshotNotFound",
    "SnapshotQuotaExceeded",
    "Throttled",
]


class NasError(Exception):
    """An error with a NAS error code, shown to the caller as is."""

    code: str = "InternalError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidParameter(NasError):
    """A request field has a value the API does not accept.

    Attributes:
        field: the request field in proto spelling (`snapshot_name`).
        parameter: the NAS parameter name (`SnapshotName`), used in the code.
    """

    prefix = "InvalidParameter"

    def __init__(self, field: str, parameter: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.parameter = parameter
        self.code = f"{self.prefix}.{parameter}"


class MissingParameter(InvalidParameter):
    """A required request field is empty."""

    prefix = "MissingParameter"


class MalformedRequest(InvalidParameter):
    """The request bytes are not a valid protobuf message of the method's request type."""

    def __init__(self, reason: str) -> None:
        super().__init__("request", "Request", f"The request could not be parsed: {reason}")
        self.code = "InvalidParameter"


class NotFound(NasError):
    """The resource named in the request does not exist."""


class FileSystemNotFound(NotFound):
    code = "InvalidFileSystem.NotFound"

    def __init__(self, file_system_id: str) -> None:
        super().__init__(
            f"The file system {file_system_id} does not exist. Check the id; file systems are added with "
            "FileSystemService/RegisterFileSystem."
        )
        self.file_system_id = file_system_id


class SnapshotNotFound(NotFound):
    code = "InvalidSnapshot.NotFound"

    def __init__(self, snapshot_id: str) -> None:
        super().__init__(f"The snapshot {snapshot_id} does not exist. Check the id with DescribeSnapshots.")
        self.snapshot_id = snapshot_id


class AlreadyExists(NasError):
    """The request conflicts with a resource or request recorded earlier."""


class FileSystemAlreadyExists(AlreadyExists):
    code = "InvalidFileSystem.AlreadyExists"


class IdempotentParameterMismatch(AlreadyExists):
    code = "IdempotentParameterMismatch"


class FailedPrecondition(NasError):
    """The resource is not in a state that allows the operation."""


class FileSystemTypeNotSupported(FailedPrecondition):
    code = "InvalidFileSystemType.NotSupported"


class IncorrectFileSystemStatus(FailedPrecondition):
    code = "Instance.IncorrectStatus"


class IncorrectSnapshotStatus(FailedPrecondition):
    code = "InvalidSnapshot.IncorrectStatus"


class SnapshotQuotaExceeded(NasError):
    """The file system already has the maximum number of snapshots.

    Attributes:
        file_system_id: the file system that is full.
        limit: the maximum number of snapshots per file system.
    """

    code = "QuotaExceeded.Snapshot"

    def __init__(self, file_system_id: str, limit: int) -> None:
        super().__init__(
            f"The file system {file_system_id} already has the maximum of {limit} snapshots. "
            "Delete a snapshot before you create another."
        )
        self.file_system_id = file_system_id
        self.limit = limit


class InvalidCredential(NasError):
    """The call carries no credential, or one that is unknown, revoked or malformed."""

    code = "InvalidCredential"


class Forbidden(NasError):
    """The caller is authenticated but lacks the role the call needs."""

    code = "Forbidden.RAM"


class Throttled(NasError):
    """The account made more calls than its limit allows in the current window.

    Attributes:
        retry_after: seconds until the window ends.
    """

    code = "Throttling.User"

    def __init__(self, account: str, limit: int, window: int, retry_after: int) -> None:
        super().__init__(
            f"Account {account} made more than {limit} CreateSnapshot calls in {window} seconds. "
            f"Retry after {retry_after} seconds."
        )
        self.retry_after = retry_after


class SnapshotCreating(NasError):
    """Another snapshot of the file system is still being created."""

    code = "OperationConflict.SnapshotCreating"


class ServiceUnavailable(NasError):
    """A dependency such as the database cannot be reached; retry later."""

    code = "ServiceUnavailable"

    def __init__(self, message: str = "The service is temporarily unavailable. Retry the request later.") -> None:
        super().__init__(message)


class InternalError(NasError):
    """An unexpected failure; its details go to the log, not to the caller."""

    code = "InternalError"

    def __init__(self, message: str = "The request failed because of an internal error.") -> None:
        super().__init__(message)
