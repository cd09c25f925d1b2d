"""The gRPC server: API services, health, reflection, and its lifecycle.

Health reports SERVING for "liveness" while the event loop runs, and for
"readiness", "" and the API service names only while PostgreSQL responds to a query.
A RabbitMQ outage does not make the API unready: accepted work waits in
the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

# Imported so that reflection can describe the error detail types, which
# lets grpcurl decode them.
from google.rpc import error_details_pb2  # noqa: F401
from nas.v1 import file_systems_pb2, file_systems_pb2_grpc, snapshots_pb2, snapshots_pb2_grpc
from service.api.file_systems import FileSystemService
from service.api.interceptor import RequestInterceptor
from service.api.snapshots import SnapshotService
from service.settings import Settings
from service.store.database import Database

__all__ = ["ApiServer"]

logger = logging.getLogger(__name__)

API_SERVICE_NAMES = (
    snapshots_pb2.DESCRIPTOR.services_by_name["SnapshotService"].full_name,
    file_systems_pb2.DESCRIPTOR.services_by_name["FileSystemService"].full_name,
)
_READINESS_NAMES = ("", "readiness", *API_SERVICE_NAMES)
_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class ApiServer:
    """The API's gRPC server bound to one address."""

    def __init__(self, settings: Settings, database: Database, *, readiness_interval: float = 5.0) -> None:
        self._settings = settings
        self._readiness_interval = readiness_interval
        self._database = database
        self._health = health.aio.HealthServicer()
        self._readiness_task: asyncio.Task[None] | None = None
        self._server = grpc.aio.server(
            interceptors=[RequestInterceptor()],
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                # Detect dead peers behind load balancers that drop idle
                # connections silently.
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
        )
        snapshots_pb2_grpc.add_SnapshotServiceServicer_to_server(
            SnapshotService(database, settings.snapshot_limit), self._server
        )
        file_systems_pb2_grpc.add_FileSystemServiceServicer_to_server(FileSystemService(database), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*API_SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port: int | None = None

    async def start(self) -> int:
        """Bind the address, start serving and return the bound port."""
        # Unready until the first database check passes.
        for name in _READINESS_NAMES:
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._health.set("liveness", health_pb2.HealthCheckResponse.SERVING)

        self.port = self._server.add_insecure_port(self._settings.grpc_address)
        if self.port == 0:
            raise OSError(f"Cannot bind the gRPC address {self._settings.grpc_address}")
        await self._server.start()

        await self._check_readiness()
        self._readiness_task = asyncio.create_task(self._watch_readiness(), name="api-readiness")
        logger.info("gRPC API listening on %s (port %d)", self._settings.grpc_address, self.port)
        return self.port

    async def stop(self, grace: float) -> None:
        """Stop taking calls, let calls in flight finish within `grace` seconds, then stop."""
        # Fail readiness first so load balancers stop sending calls here.
        await self._health.enter_graceful_shutdown()

        if self._readiness_task is not None:
            self._readiness_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness_task

        await self._server.stop(grace)
        logger.info("gRPC API stopped")

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()

    async def _check_readiness(self) -> bool:
        ready = await self._database.ping()
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in _READINESS_NAMES:
            await self._health.set(name, status)
        return ready

    async def _watch_readiness(self) -> None:
        was_ready = True
        while True:
            await asyncio.sleep(self._readiness_interval)
            ready = await self._check_readiness()
            if ready and not was_ready:
                logger.info("PostgreSQL responds again; the API is ready")
            elif was_ready and not ready:
                logger.warning("PostgreSQL does not respond; the API reports not ready")
            was_ready = ready
