"""Database outages: calls fail fast with UNAVAILABLE and recover without a restart."""

from __future__ import annotations

import dataclasses
import time
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest

from grpc_health.v1 import health_pb2, health_pb2_grpc

from nas.v1 import snapshots_pb2
from service.store.database import Database
from tests.conftest import running_api
from tests.proxy import TcpProxy
from tests.support import error_details, wait_until


@pytest.fixture
async def proxied_database_url(database_url):
    parts = urlsplit(database_url)
    proxy = TcpProxy(parts.hostname, parts.port or 5432)
    port = await proxy.start()
    yield proxy, urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))
    await proxy.close()


async def test_outage_gives_unavailable_then_recovers(settings, proxied_database_url):
    proxy, url = proxied_database_url
    database = await Database.connect(url, pool_size=2, timeout=2.0)
    try:
        async with running_api(
            dataclasses.replace(settings, database_url=url), database, readiness_interval=0.2
        ) as api:
            health = health_pb2_grpc.HealthStub(api.channel)
            file_system_id = await api.register()

            await proxy.disconnect()
            started = time.monotonic()
            error = await error_details(
                api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
            )
            elapsed = time.monotonic() - started

            assert error.code == grpc.StatusCode.UNAVAILABLE
            assert error.reason == "ServiceUnavailable"
            assert error.retry_delay is not None
            # Bounded by the database timeout (2 s) and the connect attempt, not hanging.
            assert elapsed < 10

            async def readiness(expected: int) -> bool:
                answer = await health.Check(health_pb2.HealthCheckRequest(service="readiness"))
                return answer.status == expected

            await wait_until(lambda: readiness(health_pb2.HealthCheckResponse.NOT_SERVING), what="readiness to drop")
            liveness = await health.Check(health_pb2.HealthCheckRequest(service="liveness"))
            assert liveness.status == health_pb2.HealthCheckResponse.SERVING

            proxy.reconnect()
            await wait_until(lambda: readiness(health_pb2.HealthCheckResponse.SERVING), what="readiness to return")
            response = await api.snapshots.CreateSnapshot(
                snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id)
            )
            assert response.snapshot_id
    finally:
        await database.close()


async def test_unexpected_error_is_internal(api, monkeypatch):
    """An unexpected exception becomes INTERNAL with no internal text for the caller."""
    from service.domain import snapshots as snapshot_rules

    async def explode(*_arguments, **_keywords):
        raise RuntimeError("secret detail: host db-7.internal")

    monkeypatch.setattr(snapshot_rules, "describe_snapshots", explode)

    error = await error_details(api.snapshots.DescribeSnapshots(snapshots_pb2.DescribeSnapshotsRequest()))

    assert error.code == grpc.StatusCode.INTERNAL
    assert error.reason == "InternalError"
    assert "secret" not in error.message
    assert error.request_id
