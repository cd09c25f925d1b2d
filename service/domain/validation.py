"""Parameter rules for every request, checked before any database work.

The rules follow the NAS API (version 2017-06-26). Where it is silent,
these choices hold:

- Lengths count Unicode code points, not bytes.
- A snapshot name starts with a Unicode letter (the Chinese edition of the
  API allows Chinese characters), and continues with letters, decimal
  digits, ":", "_" or "-". The "auto", "http://" and "https://" prefixes
  are rejected in any letter case.
- Names and descriptions may not contain control characters (Unicode
  category Cc, which includes NUL). PostgreSQL text cannot store NUL, and
  the others would rewrite an operator's terminal when listed. Every other
  character, right-to-left marks included, is stored as sent.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata

from service.domain import ids
from service.errors import InvalidParameter, MissingParameter

__all__ = [
    "CreateSnapshotParams",
    "FILE_SYSTEM_STATUSES",
    "FILE_SYSTEM_TYPES",
    "MAX_IDS_PER_REQUEST",
    "Page",
    "SNAPSHOT_STATUSES",
    "SNAPSHOT_TYPES",
    "check_file_system_id",
    "check_page",
    "check_snapshot_id",
    "check_snapshot_id_filter",
    "check_snapshot_name_filter",
    "check_text_field",
    "shown",
    "validate_create_snapshot",
]

FILE_SYSTEM_TYPES = ("extreme", "standard", "cpfs")
FILE_SYSTEM_STATUSES = ("Pending", "Running", "Stopped", "Extending", "Stopping", "Deleting")
SNAPSHOT_STATUSES = ("progressing", "accomplished", "failed")
SNAPSHOT_TYPES = ("user", "auto")

RETENTION_FOREVER = -1
MAX_RETENTION_DAYS = 65536
MAX_IDS_PER_REQUEST = 100
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 10
MAX_CLIENT_TOKEN_LENGTH = 64

_URL_PREFIXES = ("http://", "https://")


@dataclasses.dataclass(frozen=True)
class CreateSnapshotParams:
    file_system_id: str
    snapshot_name: str
    description: str
    retention_days: int
    client_token: str | None

    def fingerprint(self) -> str:
        """Return, as JSON, the parameters a client token replay must repeat exactly."""
        return json.dumps(self.replayed_parameters(), sort_keys=True)

    def replayed_parameters(self) -> dict[str, object]:
        return {
            "snapshot_name": self.snapshot_name,
            "description": self.description,
            "retention_days": self.retention_days,
        }


@dataclasses.dataclass(frozen=True)
class Page:
    number: int
    size: int

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size


def check_file_system_id(value: str, field: str = "file_system_id", parameter: str = "FileSystemId") -> str:
    if not value:
        raise MissingParameter(field, parameter, f"The {field} parameter is required.")
    if not ids.is_file_system_id(value):
        where = "" if field == "file_system_id" else f" in {field}"
        raise InvalidParameter(
            field,
            parameter,
            f"The file system id {shown(value)}{where} is invalid. A file system id is 1 to 64 ASCII "
            "letters, digits and hyphens, starting with a letter or digit.",
        )
    return value


def check_snapshot_id(value: str) -> str:
    if not value:
        raise MissingParameter("snapshot_id", "SnapshotId", "The snapshot_id parameter is required.")
    if not ids.is_snapshot_id(value):
        raise InvalidParameter(
            "snapshot_id",
            "SnapshotId",
            f"The snapshot_id {shown(value)} is invalid. A snapshot id is s-extreme- followed by "
            "17 lowercase letters and digits.",
        )
    return value


def check_snapshot_id_filter(values: list[str]) -> list[str]:
    if len(values) > MAX_IDS_PER_REQUEST:
        raise InvalidParameter(
            "snapshot_ids",
            "SnapshotIds",
            f"The snapshot_ids parameter has {len(values)} ids; at most {MAX_IDS_PER_REQUEST} are allowed.",
        )
    for value in values:
        if not ids.is_snapshot_id(value):
            raise InvalidParameter(
                "snapshot_ids",
                "SnapshotIds",
                f"The snapshot id {shown(value)} in snapshot_ids is invalid. A snapshot id is s-extreme- "
                "followed by 17 lowercase letters and digits.",
            )
    return list(dict.fromkeys(values))


def check_page(page_number: int | None, page_size: int | None) -> Page:
    """Validate page_number (from 1) and page_size (1 to 100); absent means 1 and 10."""
    number = 1 if page_number is None else page_number
    if number < 1:
        raise InvalidParameter("page_number", "PageNumber", f"The page_number {number} is invalid; pages start at 1.")

    size = DEFAULT_PAGE_SIZE if page_size is None else page_size
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidParameter(
            "page_size", "PageSize", f"The page_size {size} is invalid; it must be 1 to {MAX_PAGE_SIZE}."
        )
    return Page(number, size)


def validate_create_snapshot(
    file_system_id: str,
    snapshot_name: str,
    description: str,
    retention_days: int | None,
    client_token: str,
) -> CreateSnapshotParams:
    """Check every CreateSnapshot parameter, raising InvalidParameter on the first bad one."""
    check_file_system_id(file_system_id)
    _check_snapshot_name(snapshot_name)
    _check_description(description)

    retention = RETENTION_FOREVER if retention_days is None else retention_days
    if retention != RETENTION_FOREVER and not 1 <= retention <= MAX_RETENTION_DAYS:
        raise InvalidParameter(
            "retention_days",
            "RetentionDays",
            f"The retention_days {retention} is invalid; use -1 to keep the snapshot forever, "
            f"or 1 to {MAX_RETENTION_DAYS} days.",
        )

    _check_client_token(client_token)

    return CreateSnapshotParams(
        file_system_id=file_system_id,
        snapshot_name=snapshot_name,
        description=description,
        retention_days=retention,
        client_token=client_token or None,
    )


def _check_snapshot_name(name: str) -> None:
    if not name:
        return

    def invalid(reason: str) -> InvalidParameter:
        return InvalidParameter("snapshot_name", "SnapshotName", f"The snapshot_name {shown(name)} is invalid: {reason}")

    if not 2 <= len(name) <= 128:
        raise invalid(f"it is {_characters(len(name))} long, but a name is 2 to 128 characters.")
    if name.lower().startswith(_URL_PREFIXES):
        raise invalid("a name cannot start with http:// or https://.")
    if name[:4].lower() == "auto":
        raise invalid("names that start with auto are reserved for automatic snapshots.")
    if not _is_letter(name[0]):
        raise invalid("a name must start with a letter.")
    for character in name[1:]:
        if not (_is_letter(character) or unicodedata.category(character) == "Nd" or character in ":_-"):
            raise invalid(f"the character {_describe(character)} is not allowed; use letters, digits, ':', '_' or '-'.")


def _check_description(description: str) -> None:
    if not description:
        return

    def invalid(reason: str) -> InvalidParameter:
        return InvalidParameter("description", "Description", f"The description is invalid: {reason}")

    if not 2 <= len(description) <= 256:
        raise invalid(f"it is {_characters(len(description))} long, but a description is 2 to 256 characters.")
    if description.lower().startswith(_URL_PREFIXES):
        raise invalid("a description cannot start with http:// or https://.")
    for character in description:
        if unicodedata.category(character) == "Cc":
            raise invalid(f"the control character {_describe(character)} is not allowed.")


def _check_client_token(token: str) -> None:
    if not token:
        return
    if len(token) > MAX_CLIENT_TOKEN_LENGTH or not all(" " <= character <= "~" for character in token):
        raise InvalidParameter(
            "client_token",
            "ClientToken",
            f"The client_token is invalid: it must be 1 to {MAX_CLIENT_TOKEN_LENGTH} printable ASCII characters.",
        )


def check_snapshot_name_filter(name: str) -> str | None:
    """Validate a DescribeSnapshots name filter; None means no filter.

    A filter is not held to the naming rules, since it only matches, but
    it may not hold what a stored name never can.
    """
    if not name:
        return None
    if len(name) > 128 or any(unicodedata.category(character) == "Cc" for character in name):
        raise InvalidParameter(
            "snapshot_name",
            "SnapshotName",
            f"The snapshot_name filter {shown(name)} is invalid: it must be at most 128 characters "
            "without control characters.",
        )
    return name


def check_text_field(value: str, field: str, parameter: str, maximum: int) -> str:
    """Validate free text of at most `maximum` characters without control characters."""
    if len(value) > maximum or any(unicodedata.category(character) == "Cc" for character in value):
        raise InvalidParameter(
            field,
            parameter,
            f"The {field} is invalid: it must be at most {maximum} characters without control characters.",
        )
    return value


def _characters(count: int) -> str:
    return "1 character" if count == 1 else f"{count} characters"


def _is_letter(character: str) -> bool:
    return unicodedata.category(character).startswith("L")


def _describe(character: str) -> str:
    return f"U+{ord(character):04X}"


def shown(value: str, limit: int = 80) -> str:
    """Quote a caller's value for a message, cut when long.

    repr() escapes control and format characters, so a value cannot rewrite
    the terminal that shows the error, while printable letters stay readable.
    """
    text = value if len(value) <= limit else value[:limit] + "..."
    return repr(text)
