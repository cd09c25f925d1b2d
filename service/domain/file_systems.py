"""Registering, updating and listing file systems.

The system that owns file systems calls these through the internal
FileSystemService. Registering one also sends a message that makes a worker to create its
storage, because the API process never touches the data root.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging

import asyncpg

from service import messages, metrics
from service.domain.validation import (
    FILE_SYSTEM_STATUSES,
    FILE_SYSTEM_TYPES,
    MAX_IDS_PER_REQUEST,
    Page,
    check_file_system_id,
    shown,
)
from service.domain.identity import check_account
from service.errors import FileSystemAlreadyExists, FileSystemNotFound, InvalidParameter, MissingParameter
from service.store import file_systems, outbox, snapshots
from service.store.database import Database
from service.store.file_systems import FileSystemRecord

__all__ = [
    "FileSystemSpec",
    "FileSystemUpdate",
    "describe_file_systems",
    "register_file_system",
    "release_file_system",
    "update_file_system",
    "validate_registration",
    "validate_update",
]

logger = logging.getLogger(__name__)

# Capacity above 1 EiB is surely a unit mistake (bytes sent as GiB).
_MAX_CAPACITY_GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class FileSystemSpec:
    file_system_id: str
    account: str
    file_system_type: str
    status: str
    capacity_gib: int
    expired_time: datetime.datetime | None


@dataclasses.dataclass(frozen=True)
class FileSystemUpdate:
    file_system_id: str
    status: str | None
    expired_time: datetime.datetime | None
    clear_expired_time: bool


def _check_status(status: str) -> str:
    if status not in FILE_SYSTEM_STATUSES:
        raise InvalidParameter(
            "status", "Status", f"The status {shown(status)} is invalid; use one of {', '.join(FILE_SYSTEM_STATUSES)}."
        )
    return status


def validate_registration(
    file_system_id: str,
    account: str,
    file_system_type: str,
    status: str,
    capacity_gib: int,
    expired_time: datetime.datetime | None,
) -> FileSystemSpec:
    check_file_system_id(file_system_id)

    file_system_type = file_system_type or "extreme"
    if file_system_type not in FILE_SYSTEM_TYPES:
        raise InvalidParameter(
            "file_system_type",
            "FileSystemType",
            f"The file_system_type {shown(file_system_type)} is invalid; use one of {', '.join(FILE_SYSTEM_TYPES)}.",
        )

    status = _check_status(status or "Running")

    if capacity_gib == 0:
        raise MissingParameter("capacity", "Capacity", "The capacity parameter (GiB) is required.")
    if not 1 <= capacity_gib <= _MAX_CAPACITY_GIB:
        raise InvalidParameter(
            "capacity", "Capacity", f"The capacity {capacity_gib} is invalid; it must be 1 to {_MAX_CAPACITY_GIB} GiB."
        )

    account = check_account(account or "default")
    return FileSystemSpec(file_system_id, account, file_system_type, status, capacity_gib, expired_time)


def validate_update(
    file_system_id: str, status: str | None, expired_time: datetime.datetime | None, clear_expired_time: bool
) -> FileSystemUpdate:
    check_file_system_id(file_system_id)
    if status is not None:
        _check_status(status)
    if clear_expired_time and expired_time is not None:
        raise InvalidParameter(
            "clear_expired_time",
            "ClearExpiredTime",
            "Set either expired_time or clear_expired_time, not both.",
        )
    return FileSystemUpdate(file_system_id, status, expired_time, clear_expired_time)


async def register_file_system(database: Database, spec: FileSystemSpec) -> FileSystemRecord:
    """Record the file system, or return it unchanged when the same values were registered before."""
    async with database.transaction() as connection:
        created = await file_systems.insert(
            connection,
            spec.file_system_id,
            spec.account,
            spec.file_system_type,
            spec.status,
            spec.capacity_gib,
            spec.expired_time,
        )
        if created is not None:
            await outbox.enqueue(connection, messages.PROVISION_FILE_SYSTEM, {"file_system_id": spec.file_system_id})
            logger.info(
            "Registered file system %s (%s) for account %s", spec.file_system_id, spec.file_system_type, spec.account
        )
            return created

        existing = await file_systems.get(connection, spec.file_system_id)

    if existing.released_at is not None:
        raise FileSystemAlreadyExists(
            f"The file system {spec.file_system_id} was released; a released id cannot be registered again."
        )
    registered = {
        "account": existing.account,
        "file_system_type": existing.file_system_type,
        "status": existing.status,
        "capacity": existing.capacity_gib,
        "expired_time": existing.expired_time,
    }
    requested = {
        "account": spec.account,
        "file_system_type": spec.file_system_type,
        "status": spec.status,
        "capacity": spec.capacity_gib,
        "expired_time": spec.expired_time,
    }
    differing = [name for name in registered if registered[name] != requested[name]]
    if differing:
        raise FileSystemAlreadyExists(
            f"The file system {spec.file_system_id} is already registered with a different "
            f"{' and '.join(differing)}. UpdateFileSystem changes the status and the expired time; "
            "the account, type and capacity of a registered file system cannot change."
        )

    # A repeated registration also repairs missing storage: provisioning
    # is idempotent, and the caller may retry because the first one failed.
    async with database.transaction() as connection:
        await outbox.enqueue(connection, messages.PROVISION_FILE_SYSTEM, {"file_system_id": spec.file_system_id})
    logger.info("File system %s was already registered with the same values", spec.file_system_id)
    return existing


async def update_file_system(database: Database, change: FileSystemUpdate) -> FileSystemRecord:
    async with database.transaction() as connection:
        # The same lock as snapshot admission, so a status change and an
        # admission are ordered.
        current = await file_systems.lock(connection, change.file_system_id)
        if current is None or current.released_at is not None:
            raise FileSystemNotFound(change.file_system_id)

        status = change.status if change.status is not None else current.status
        if change.clear_expired_time:
            expired_time = None
        elif change.expired_time is not None:
            expired_time = change.expired_time
        else:
            expired_time = current.expired_time

        updated = await file_systems.update(connection, change.file_system_id, status, expired_time)

    logger.info(
        "Updated file system %s: status %s, expired time %s", change.file_system_id, status, expired_time
    )
    return updated


async def release_file_system(database: Database, file_system_id: str) -> list[str]:
    """Record that the file system is gone; return the ids of the snapshots deleted with it.

    Releasing twice succeeds, the second time deleting nothing.
    """
    async with database.transaction() as connection:
        current = await file_systems.lock(connection, file_system_id)
        if current is None:
            raise FileSystemNotFound(file_system_id)
        if current.released_at is not None:
            return []
        deleted = await release_locked(connection, file_system_id)

    metrics.SNAPSHOTS_DELETED.labels("release").inc(len(deleted))
    logger.info("Released file system %s; deleted %d snapshots with it", file_system_id, len(deleted))
    return deleted


async def release_locked(connection: asyncpg.Connection, file_system_id: str) -> list[str]:
    """Release a file system whose row lock the caller's transaction holds.

    Deletes the snapshot in creation and every snapshot whose creation
    overlapped the expired time, and sends the messages that make workers
    remove their data and the file system's. A worker that finishes a
    creation takes the same lock. It therefore either completed before this
    runs, and the snapshot is judged by its completion time, or finds the
    snapshot deleted after.
    """
    deleted = await snapshots.delete_for_release(connection, file_system_id)
    await outbox.enqueue_many(
        connection,
        messages.DELETE_SNAPSHOT,
        [{"snapshot_id": snapshot_id, "file_system_id": file_system_id} for snapshot_id in deleted],
    )
    await file_systems.release(connection, file_system_id)
    await outbox.enqueue(connection, messages.RELEASE_FILE_SYSTEM, {"file_system_id": file_system_id})
    return deleted


async def describe_file_systems(
    database: Database, file_system_ids: list[str], page: Page
) -> tuple[int, list[FileSystemRecord]]:
    if len(file_system_ids) > MAX_IDS_PER_REQUEST:
        raise InvalidParameter(
            "file_system_ids",
            "FileSystemIds",
            f"The file_system_ids parameter has {len(file_system_ids)} ids; at most {MAX_IDS_PER_REQUEST} are allowed.",
        )
    for file_system_id in file_system_ids:
        check_file_system_id(file_system_id, "file_system_ids", "FileSystemIds")
    unique_ids = list(dict.fromkeys(file_system_ids))

    async with database.transaction(readonly=True) as connection:
        total = await file_systems.count(connection, unique_ids)
        found = await file_systems.list_page(connection, unique_ids, page.size, page.offset)
    return total, found
