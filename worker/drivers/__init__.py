"""Storage drivers; `create_driver` picks one from the NAS_DRIVER setting."""

from __future__ import annotations

from service.settings import Settings
from worker.drivers.base import StorageDriver

__all__ = ["create_driver"]


def create_driver(settings: Settings) -> StorageDriver:
    """Build the driver that NAS_DRIVER names. A driver that cannot run here raises DriverUnavailable."""
    if settings.driver == "local":
        from worker.drivers.local import LocalDriver

        return LocalDriver(settings.data_root, copy_bandwidth=settings.copy_bandwidth)
    if settings.driver == "btrfs":
        from worker.drivers.btrfs import BtrfsDriver

        return BtrfsDriver(settings.data_root)
    raise ValueError(f"unknown storage driver {settings.driver!r}")
