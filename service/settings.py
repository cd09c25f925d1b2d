"""Settings read from NAS_* environment variables, with local defaults.

Every setting has a default that works against the PostgreSQL and
RabbitMQ of a developer machine. A bad value stops the process at start
with a message that names the variable, the value and what is expected.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["Settings", "SettingsError", "is_loopback"]


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
    # PEM files of the API's TLS certificate chain and key; empty serves
    # plaintext. A client CA file makes client certificates mandatory.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # Serve plaintext on an address beyond loopback anyway.
    allow_plaintext: bool = False
    # "auto": authentication on unless the API listens on loopback only.
    auth: str = "auto"
    # Accounts whose client certificates carry the admin role.
    admin_accounts: tuple[str, ...] = ()
    # CreateSnapshot calls an account may make per window, across replicas.
    throttle_limit: int = 120
    throttle_window: int = 60
    # Seconds a starting process waits for PostgreSQL and RabbitMQ.
    startup_timeout: float = 60.0

    @property
    def secrets(self) -> tuple[str, ...]:
        """Return the passwords in the connection URLs, which logs must never show."""
        found = (urlsplit(self.database_url).password, urlsplit(self.amqp_url).password)
        return tuple(secret for secret in found if secret)

    @property
    def listens_on_loopback(self) -> bool:
        return is_loopback(self.grpc_address.rpartition(":")[0])

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "on" or (self.auth == "auto" and not self.listens_on_loopback)
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

        def secret(name: str, default: str) -> str:
            """Read NAME, or the file that NAME_FILE names, as Kubernetes mounts Secrets."""
            path = env.get(f"{name}_FILE", "").strip()
            if path and env.get(name, "").strip():
                raise SettingsError(f"Set {name} or {name}_FILE, not both.")
            if not path:
                return text(name, default)
            try:
                value = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SettingsError(f"{name}_FILE={path!r} cannot be read: {exc.strerror}.") from None
            if not value:
                raise SettingsError(f"{name}_FILE={path!r} is empty.")
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

        database_url = secret("NAS_DATABASE_URL", defaults.database_url)
        if not database_url.startswith(("postgresql://", "postgres://")):
            raise SettingsError("NAS_DATABASE_URL must be a postgresql:// URL.")

        amqp_url = secret("NAS_AMQP_URL", defaults.amqp_url)
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

        tls_cert_file = text("NAS_TLS_CERT_FILE", "")
        tls_key_file = text("NAS_TLS_KEY_FILE", "")
        tls_client_ca_file = text("NAS_TLS_CLIENT_CA_FILE", "")
        if bool(tls_cert_file) != bool(tls_key_file):
            raise SettingsError("Set both NAS_TLS_CERT_FILE and NAS_TLS_KEY_FILE, or neither.")
        if tls_client_ca_file and not tls_cert_file:
            raise SettingsError("NAS_TLS_CLIENT_CA_FILE needs NAS_TLS_CERT_FILE and NAS_TLS_KEY_FILE.")
        for name, path in (
            ("NAS_TLS_CERT_FILE", tls_cert_file),
            ("NAS_TLS_KEY_FILE", tls_key_file),
            ("NAS_TLS_CLIENT_CA_FILE", tls_client_ca_file),
        ):
            if path and not Path(path).is_file():
                raise SettingsError(f"{name}={path!r} is not a readable file.")

        auth = text("NAS_AUTH", defaults.auth).lower()
        if auth not in ("auto", "on", "off"):
            raise SettingsError(f"NAS_AUTH={auth!r} is not auto, on or off.")
        admin_accounts = tuple(
            account.strip() for account in env.get("NAS_ADMIN_ACCOUNTS", "").split(",") if account.strip()
        )

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
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            tls_client_ca_file=tls_client_ca_file,
            allow_plaintext=boolean("NAS_ALLOW_PLAINTEXT", defaults.allow_plaintext),
            auth=auth,
            admin_accounts=admin_accounts,
            throttle_limit=integer("NAS_THROTTLE_LIMIT", defaults.throttle_limit, 1, 1_000_000),
            throttle_window=integer("NAS_THROTTLE_WINDOW", defaults.throttle_window, 1, 86_400),
            startup_timeout=number("NAS_STARTUP_TIMEOUT", defaults.startup_timeout, 1.0),
            migrate_on_start=boolean("NAS_MIGRATE_ON_START", defaults.migrate_on_start),
            log_level=log_level,
        )


def _check_address(name: str, address: str) -> None:
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name}={address!r} is not HOST:PORT, for example 127.0.0.1:50051.")


def is_loopback(host: str) -> bool:
    """Tell whether a listen host reaches only this machine (0.0.0.0 and [::] do not)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
