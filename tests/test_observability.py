"""Logs, metrics and health as operators and Kubernetes read them."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nas.v1 import snapshots_pb2
from service import metrics
from service.logs import ContextFilter, JsonFormatter, bind_ids
from tests.conftest import running_api
from tests.support import error_details, new_file_system_id
from worker.app import Worker


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


async def check(address: str, service: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=10
        )
    return response.status


def test_json_log_line_has_ids():
    record = logging.LogRecord("worker.tasks", logging.INFO, __file__, 1, "Snapshot %s done", ("x",), None)
    with bind_ids(snapshot_id="s-extreme-" + "a" * 17, file_system_id="extreme-1"):
        ContextFilter().filter(record)

    entry = json.loads(JsonFormatter().format(record))

    assert entry["message"] == "Snapshot x done"
    assert entry["level"] == "INFO"
    assert entry["snapshot_id"] == "s-extreme-" + "a" * 17
    assert entry["file_system_id"] == "extreme-1"
    assert "request_id" not in entry


async def test_rpc_metrics_count_codes(api):
    before = metrics.RPC_REQUESTS.labels("CreateSnapshot", "NOT_FOUND")._value.get()

    await error_details(
        api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=new_file_system_id()))
    )

    assert metrics.RPC_REQUESTS.labels("CreateSnapshot", "NOT_FOUND")._value.get() == before + 1


def test_metrics_served_over_http():
    address = free_address()
    metrics.serve_metrics(address)

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()

    assert "nas_rpc_requests_total" in text
    assert "nas_outbox_backlog" in text


async def test_api_health_on_separate_address(settings, database):
    address = free_address()
    async with running_api(dataclasses.replace(settings, health_address=address), database):
        readiness = await check(address, "readiness")
        liveness = await check(address, "liveness")

    assert readiness == health_pb2.HealthCheckResponse.SERVING
    assert liveness == health_pb2.HealthCheckResponse.SERVING


async def test_worker_health_reflects_dependencies(settings, database):
    address = free_address()
    worker = Worker(dataclasses.replace(settings, health_address=address), database)
    await worker.start()
    try:
        readiness = await check(address, "readiness")
        liveness = await check(address, "liveness")
    finally:
        await worker.stop(grace=5)

    assert readiness == health_pb2.HealthCheckResponse.SERVING
    assert liveness == health_pb2.HealthCheckResponse.SERVING
