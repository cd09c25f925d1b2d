"""Storage drivers; `create_driver` picks one from the NAS_DRIVER setting."""

from __future__ import annotations

from service.settings import Settings
from worker.drivers.base import StorageDriver

__all__ = ["create_driver"]


def create_driver(settings: Settings) -> StorageDriver:
    if settings.driver == "local":
        from worker.drivers.local import LocalDriver

        return LocalDriver(settings.data_root, copy_bandwidth=settings.copy_bandwidth)
    raise ValueError(f"unknown storage driver {settings.driver!r}")
