"""Settings read from NAS_* environment variables, with local defaults.

Every setting has a default that works against the PostgreSQL and
RabbitMQ of a developer machine. A bad value stops the process at start
with a message that names the variable, the value and what is expected.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["Settings", "SettingsError"]


class SettingsError(ValueError):
    """An environment variable has a value the service cannot use."""


def _default_data_root() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "nas-snapshots")


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str = "postgresql://postgres@127.0.0.1:5432/nas_snapshots"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    grpc_address: str = "127.0.0.1:50051"
    data_root: Path = dataclasses.field(default_factory=lambda: Path(_default_data_root()))
    driver: str = "local"
    # Snapshots per file system, counting every snapshot not deleted.
    snapshot_limit: int = 64
    # Snapshot creations one worker process runs at once.
    worker_concurrency: int = 2
    # Connections in each process's PostgreSQL pool.
    database_pool_size: int = 10
    # Seconds a statement or a lock wait may take before it is cancelled.
    database_timeout: float = 10.0
    # Seconds between two retention sweeps in each worker.
    sweep_interval: float = 60.0
    # Seconds a worker's claim on a snapshot lasts unless renewed; a
    # creation whose worker died is taken over this long after its last
    # renewal.
    lease_seconds: float = 30.0
    # Creation attempts (claims by a worker, and deliveries of the message
    # that failed) before a snapshot is marked failed.
    max_attempts: int = 5
    # Seconds after which a snapshot still in creation is marked failed.
    max_creation_seconds: float = 86400.0
    # Bytes per second the local driver may copy; 0 means no limit.
    copy_bandwidth: int = 0
    # "text" for people, "json" for log collectors: one object per line.
    log_format: str = "text"
    # HOST:PORT for Prometheus metrics over HTTP; empty turns them off.
    metrics_address: str = ""
    # HOST:PORT of a plaintext gRPC server that carries only the health
    # service, for probes that cannot use the API port; empty turns it off.
    health_address: str = ""
    # Apply schema migrations when a process starts; turn off when a
    # separate migration step runs them.
    migrate_on_start: bool = True
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings, raising SettingsError on the first bad value."""
        env = os.environ if environ is None else environ
        defaults = cls()

        def text(name: str, default: str) -> str:
            value = env.get(name, "").strip()
            return value or default

        def integer(name: str, default: int, minimum: int, maximum: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not an integer; expected {minimum} to {maximum}.") from None
            if not minimum <= value <= maximum:
                raise SettingsError(f"{name}={value} is out of range; expected {minimum} to {maximum}.")
            return value

        def number(name: str, default: float, minimum: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a number of seconds.") from None
            if not value >= minimum:
                raise SettingsError(f"{name}={raw} is too small; expected at least {minimum} seconds.")
            return value

        def boolean(name: str, default: bool) -> bool:
            raw = env.get(name, "").strip().lower()
            if not raw:
                return default
            if raw in ("1", "true", "yes", "on"):
                return True
            if raw in ("0", "false", "no", "off"):
                return False
            raise SettingsError(f"{name}={raw!r} is not a boolean; expected true or false.")

        database_url = text("NAS_DATABASE_URL", defaults.database_url)
        if not database_url.startswith(("postgresql://", "postgres://")):
            raise SettingsError("NAS_DATABASE_URL must be a postgresql:// URL.")

        amqp_url = text("NAS_AMQP_URL", defaults.amqp_url)
        if not amqp_url.startswith(("amqp://", "amqps://")):
            raise SettingsError("NAS_AMQP_URL must be an amqp:// or amqps:// URL.")

        grpc_address = text("NAS_GRPC_ADDRESS", defaults.grpc_address)
        _check_address("NAS_GRPC_ADDRESS", grpc_address)

        driver = text("NAS_DRIVER", defaults.driver)
        if driver not in ("local", "btrfs"):
            raise SettingsError(f"NAS_DRIVER={driver!r} is not a known storage driver; expected local or btrfs.")

        log_format = text("NAS_LOG_FORMAT", defaults.log_format).lower()
        if log_format not in ("text", "json"):
            raise SettingsError(f"NAS_LOG_FORMAT={log_format!r} is not text or json.")

        metrics_address = text("NAS_METRICS_ADDRESS", "")
        if metrics_address:
            _check_address("NAS_METRICS_ADDRESS", metrics_address)
        health_address = text("NAS_HEALTH_ADDRESS", "")
        if health_address:
            _check_address("NAS_HEALTH_ADDRESS", health_address)

        log_level = text("NAS_LOG_LEVEL", defaults.log_level).upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"NAS_LOG_LEVEL={log_level!r} is not DEBUG, INFO, WARNING or ERROR.")

        return cls(
            database_url=database_url,
            amqp_url=amqp_url,
            grpc_address=grpc_address,
            data_root=Path(text("NAS_DATA_ROOT", str(defaults.data_root))).expanduser(),
            driver=driver,
            snapshot_limit=integer("NAS_SNAPSHOT_LIMIT", defaults.snapshot_limit, 1, 100_000),
            worker_concurrency=integer("NAS_WORKER_CONCURRENCY", defaults.worker_concurrency, 1, 1_000),
            database_pool_size=integer("NAS_DATABASE_POOL_SIZE", defaults.database_pool_size, 1, 1_000),
            database_timeout=number("NAS_DATABASE_TIMEOUT", defaults.database_timeout, 0.1),
            sweep_interval=number("NAS_SWEEP_INTERVAL", defaults.sweep_interval, 1.0),
            lease_seconds=number("NAS_LEASE_SECONDS", defaults.lease_seconds, 2.0),
            max_attempts=integer("NAS_MAX_ATTEMPTS", defaults.max_attempts, 1, 100),
            max_creation_seconds=number("NAS_MAX_CREATION_SECONDS", defaults.max_creation_seconds, 10.0),
            copy_bandwidth=integer("NAS_COPY_BANDWIDTH", defaults.copy_bandwidth, 0, 1 << 50),
            log_format=log_format,
            metrics_address=metrics_address,
            health_address=health_address,
            migrate_on_start=boolean("NAS_MIGRATE_ON_START", defaults.migrate_on_start),
            log_level=log_level,
        )


def _check_address(name: str, address: str) -> None:
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name}={address!r} is not HOST:PORT, for example 127.0.0.1:50051.")
