"""Broker and database restarts, and SIGTERM, under load.

These tests stop the machine's real RabbitMQ and PostgreSQL for a few
seconds, so other programs using them on this machine see the outage
too. Each test starts the server again and waits until it accepts
connections before it ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import socket
import time

import asyncpg
import grpc
import pytest

from nas.v1 import file_systems_pb2, file_systems_pb2_grpc, snapshots_pb2, snapshots_pb2_grpc
from tests.processes import Process, environment_for
from tests.services import postgres_down, rabbitmq_down
from tests.support import new_file_system_id, wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.outage]


async def register_many(api, count: int) -> list[str]:
    file_system_ids = [new_file_system_id() for _ in range(count)]
    for start in range(0, count, 50):
        await asyncio.gather(*(api.register(file_system_id) for file_system_id in file_system_ids[start : start + 50]))
    return file_system_ids


async def statuses(database_url: str, file_system_ids: list[str]) -> dict[str, list[str]]:
    """Return each file system's live snapshots' statuses."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT file_system_id, status FROM snapshots WHERE file_system_id = ANY($1::text[]) AND deleted_at IS NULL",
            file_system_ids,
        )
    finally:
        await connection.close()
    found: dict[str, list[str]] = {file_system_id: [] for file_system_id in file_system_ids}
    for row in rows:
        found[row["file_system_id"]].append(row["status"])
    return found


async def wait_all_accomplished(database_url: str, file_system_ids: list[str], timeout: float) -> None:
    async def done() -> bool:
        found = await statuses(database_url, file_system_ids)
        return all(found[file_system_id] == ["accomplished"] for file_system_id in file_system_ids)

    await wait_until(done, timeout=timeout, interval=0.5, what="every snapshot to be accomplished")


async def test_broker_restart_during_burst(api, worker, data_root, database_url):
    file_system_ids = await register_many(api, 300)

    async def provisioned() -> bool:
        return all((data_root / "file-systems" / file_system_id).is_dir() for file_system_id in file_system_ids)

    await wait_until(provisioned, timeout=120, interval=0.5, what="300 file systems to be provisioned")

    async def create_all() -> None:
        for start in range(0, 300, 30):
            batch = file_system_ids[start : start + 30]
            await asyncio.gather(
                *(api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=fs)) for fs in batch)
            )
            await asyncio.sleep(0.05)

    creating = asyncio.create_task(create_all())
    await asyncio.sleep(0.3)
    async with rabbitmq_down():
        await asyncio.sleep(3)
    await creating

    await wait_all_accomplished(database_url, file_system_ids, timeout=180)
    for file_system_id in file_system_ids:
        entries = list((data_root / "snapshots" / file_system_id).iterdir())
        assert len(entries) == 1, f"{file_system_id}: {entries}"


async def test_database_outage_under_load(api, worker, data_root, database_url):
    file_system_ids = await register_many(api, 300)
    accepted: list[str] = []
    codes: list[grpc.StatusCode] = []
    remaining = list(file_system_ids)

    async def load(duration: float) -> None:
        deadline = time.monotonic() + duration
        while remaining and time.monotonic() < deadline:
            file_system_id = remaining.pop()
            try:
                await api.snapshots.CreateSnapshot(
                    snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id), timeout=15
                )
            except grpc.aio.AioRpcError as error:
                codes.append(error.code())
            else:
                codes.append(grpc.StatusCode.OK)
                accepted.append(file_system_id)
            await asyncio.sleep(0.05)

    steady = asyncio.create_task(load(30))
    await asyncio.sleep(3)
    async with postgres_down():
        await asyncio.sleep(10)
    # The first call after recovery succeeds.
    first_after = remaining.pop()
    await api.snapshots.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=first_after), timeout=15)
    accepted.append(first_after)
    await steady

    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    assert grpc.StatusCode.UNAVAILABLE in codes
    await wait_all_accomplished(database_url, accepted, timeout=120)
    # A file system whose call failed has no snapshot, or (when the commit
    # happened before the connection broke) one that completed.
    found = await statuses(database_url, file_system_ids)
    assert all(status == "accomplished" for statuses_ in found.values() for status in statuses_)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_sigterm_api_under_load(settings, tmp_path, database_url):
    address = f"127.0.0.1:{free_port()}"
    api = Process(["-m", "service"], environment_for(settings, NAS_GRPC_ADDRESS=address), tmp_path / "api.log")
    channel = grpc.aio.insecure_channel(address)
    try:
        await asyncio.wait_for(channel.channel_ready(), 30)
        file_systems = file_systems_pb2_grpc.FileSystemServiceStub(channel)
        snapshots = snapshots_pb2_grpc.SnapshotServiceStub(channel)
        file_system_ids = [new_file_system_id() for _ in range(200)]
        await asyncio.gather(
            *(
                file_systems.RegisterFileSystem(
                    file_systems_pb2.RegisterFileSystemRequest(file_system_id=fs, capacity=100), timeout=15
                )
                for fs in file_system_ids
            )
        )

        async def call(file_system_id: str, delay: float) -> grpc.StatusCode:
            await asyncio.sleep(delay)
            try:
                await snapshots.CreateSnapshot(
                    snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id), timeout=15
                )
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

        calls = [asyncio.create_task(call(fs, index * 0.005)) for index, fs in enumerate(file_system_ids)]
        await asyncio.sleep(0.4)
        exit_code = await asyncio.to_thread(api.terminate, 30)
        results = await asyncio.wait_for(asyncio.gather(*calls), 30)
    finally:
        await channel.close()
        if api.popen.poll() is None:
            api.terminate()

    assert exit_code == 0, api.output()
    # NOTE: grpc-core cancels calls that arrive while the server stops,
    # before any handler runs, and the client sees CANCELLED. Such a call
    # did nothing, so it is as safe to retry as one refused with UNAVAILABLE.
    assert set(results) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert grpc.StatusCode.OK in results
    failed = [fs for fs, code in zip(file_system_ids, results) if code != grpc.StatusCode.OK]
    accepted = [fs for fs, code in zip(file_system_ids, results) if code == grpc.StatusCode.OK]
    created = await statuses(database_url, file_system_ids)
    assert [fs for fs in failed if created[fs]] == []
    assert all(created[fs] == ["progressing"] for fs in accepted)
