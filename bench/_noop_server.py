"""A grpc.aio server with only the standard health service, the memory baseline for the API.

`python -m bench._noop_server` binds a free port on 127.0.0.1, reports
"liveness" as SERVING, writes "port N" on stdout and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


async def serve() -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("liveness", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sys.stdout.write(f"port {port}\n")
    sys.stdout.flush()

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(serve())
