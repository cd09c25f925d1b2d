"""The gRPC server: API services, health, reflection, and its lifecycle.

Readiness follows PostgreSQL only: a RabbitMQ outage does not make the
API unready, because accepted work waits in the outbox.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

# Imported so that reflection can describe the error detail types, which
# lets grpcurl decode them.
from google.rpc import error_details_pb2  # noqa: F401
from nas.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    file_systems_pb2,
    file_systems_pb2_grpc,
    snapshots_pb2,
    snapshots_pb2_grpc,
)
from service.api.admin import AdminService
from service.api.auth import Authenticator
from service.api.file_systems import FileSystemService
from service.api.interceptor import RequestInterceptor
from service.api.snapshots import SnapshotService
from service.domain.throttling import ThrottlePolicy
from service.health import HealthReporter
from service.settings import Settings, SettingsError
from service.store.database import Database

__all__ = ["ApiServer"]

logger = logging.getLogger(__name__)

API_SERVICE_NAMES = (
    snapshots_pb2.DESCRIPTOR.services_by_name["SnapshotService"].full_name,
    file_systems_pb2.DESCRIPTOR.services_by_name["FileSystemService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class ApiServer:
    """The API's gRPC server bound to one address."""

    def __init__(self, settings: Settings, database: Database, *, readiness_interval: float = 5.0) -> None:
        self._settings = settings
        self._health = HealthReporter(
            database.ping, process="API", extra_names=API_SERVICE_NAMES, interval=readiness_interval
        )
        self._server = grpc.aio.server(
            interceptors=[RequestInterceptor(Authenticator(database, settings))],
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                # Detect dead peers behind load balancers that drop idle
                # connections silently.
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                # Clients reconnect now and then, so new API pods behind a
                # Kubernetes Service get their share of long-lived clients.
                ("grpc.max_connection_age_ms", 30 * 60_000),
                ("grpc.max_connection_age_grace_ms", 30_000),
            ],
        )
        snapshots_pb2_grpc.add_SnapshotServiceServicer_to_server(
            SnapshotService(
                database,
                settings.snapshot_limit,
                ThrottlePolicy(settings.throttle_limit, settings.throttle_window),
            ),
            self._server,
        )
        file_systems_pb2_grpc.add_FileSystemServiceServicer_to_server(FileSystemService(database), self._server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(database), self._server)
        self._health.add_to(self._server)
        reflection.enable_server_reflection(
            (*API_SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port: int | None = None

    async def start(self) -> int:
        """Bind the address, start serving and return the bound port."""
        self.port = self._bind()
        if self.port == 0:
            raise OSError(f"Cannot bind the gRPC address {self._settings.grpc_address}")
        # Readiness is known before the first call can arrive.
        await self._health.start(self._settings.health_address)
        await self._server.start()
        logger.info("gRPC API listening on %s (port %d)", self._settings.grpc_address, self.port)
        return self.port

    def _bind(self) -> int:
        """Bind the API address with TLS or plaintext, refusing plaintext beyond loopback unless allowed."""
        settings = self._settings
        if settings.tls_cert_file:
            client_ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
            credentials = grpc.ssl_server_credentials(
                [(Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            logger.info("TLS is on%s", ", client certificates required" if client_ca else "")
            port = self._server.add_secure_port(settings.grpc_address, credentials)
        else:
            if not settings.listens_on_loopback:
                if not settings.allow_plaintext:
                    raise SettingsError(
                        f"NAS_GRPC_ADDRESS={settings.grpc_address} listens beyond loopback without TLS. Set "
                        "NAS_TLS_CERT_FILE and NAS_TLS_KEY_FILE, or NAS_ALLOW_PLAINTEXT=true where a trusted "
                        "network or service mesh encrypts the traffic."
                    )
                logger.warning("Serving plaintext beyond loopback on %s (NAS_ALLOW_PLAINTEXT)", settings.grpc_address)
            port = self._server.add_insecure_port(settings.grpc_address)

        if settings.auth == "off" and not settings.listens_on_loopback:
            raise SettingsError("NAS_AUTH=off is allowed only when NAS_GRPC_ADDRESS is a loopback address.")
        if settings.auth_enabled:
            logger.info("Authentication is on: calls need a bearer token or a client certificate")
        else:
            logger.warning(
                "Authentication is off: every call acts as account 'default' with the admin role (loopback only)"
            )
        return port

    async def stop(self, grace: float) -> None:
        """Stop taking calls, let calls in flight finish within `grace` seconds, then stop."""
        # Fail readiness first so load balancers stop sending calls here.
        await self._health.stop()
        await self._server.stop(grace)
        logger.info("gRPC API stopped")

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
