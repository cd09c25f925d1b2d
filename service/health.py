"""The standard gRPC health service, shared by the API and the worker.

Two names matter to Kubernetes probes. "liveness" is SERVING while the
process's event loop runs, because a dependency outage must not restart
every pod. "readiness" follows a check that the process supplies: the
API checks PostgreSQL, and the worker PostgreSQL and RabbitMQ. The empty name
and any extra names follow readiness too.

Probes send no TLS client certificate and no credentials, so the service
can also be served on a separate plaintext address that carries nothing
else (`NAS_HEALTH_ADDRESS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

__all__ = ["HealthReporter"]

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthReporter:
    """Keeps readiness up to date and serves the health service."""

    def __init__(
        self,
        check_ready: Callable[[], Awaitable[bool]],
        *,
        process: str,
        extra_names: Iterable[str] = (),
        interval: float = 5.0,
    ) -> None:
        self.servicer = health.aio.HealthServicer()
        self._check_ready = check_ready
        self._process = process
        self._names = ("", "readiness", *extra_names)
        self._interval = interval
        self._task: asyncio.Task[None] | None = None
        self._server: grpc.aio.Server | None = None

    def add_to(self, server: grpc.aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    async def start(self, address: str = "") -> None:
        """Report unready until the first check passes, then keep checking; serve on `address` if given."""
        await self.servicer.set("liveness", SERVING)
        await self._report(await self._check_ready())
        self._task = asyncio.create_task(self._watch(), name=f"{self._process}-readiness")

        if address:
            self._server = grpc.aio.server()
            self.add_to(self._server)
            if self._server.add_insecure_port(address) == 0:
                raise OSError(f"Cannot bind the health address {address}")
            await self._server.start()
            logger.info("%s health service listening on %s", self._process, address)

    async def stop(self) -> None:
        """Report NOT_SERVING for every name, stop checking and stop the health server."""
        await self.servicer.enter_graceful_shutdown()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._server is not None:
            await self._server.stop(grace=1)

    async def _report(self, ready: bool) -> None:
        for name in self._names:
            await self.servicer.set(name, SERVING if ready else NOT_SERVING)

    async def _watch(self) -> None:
        was_ready = True
        while True:
            await asyncio.sleep(self._interval)
            ready = await self._check_ready()
            if ready and not was_ready:
                logger.info("%s dependencies respond again; ready", self._process)
            elif was_ready and not ready:
                logger.warning("%s dependencies do not respond; reporting not ready", self._process)
            was_ready = ready
            await self._report(ready)
