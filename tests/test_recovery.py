"""Crashes and failures in the middle of work: nothing lost, nothing stuck, nothing doubled."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
import pytest

from nas.v1 import snapshots_pb2
from tests.processes import Process, environment_for
from tests.proxy import TcpProxy
from tests.support import describe_one, provisioned_file_system, wait_for_status, wait_until
from worker import topology
from worker.app import Worker
from worker.drivers.base import DriverError
from worker.drivers.local import LocalDriver

# Short leases make a dead worker's snapshot available again within seconds.
LEASE = "3"


def create(file_system_id: str) -> snapshots_pb2.CreateSnapshotRequest:
    return snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id)


def snapshot_entries(data_root, file_system_id: str) -> list[str]:
    directory = data_root / "snapshots" / file_system_id
    return sorted(path.name for path in directory.iterdir()) if directory.exists() else []


@pytest.fixture
def start_worker(settings, tmp_path):
    """Start `python -m worker` processes; every one still running is stopped at the end."""
    started: list[Process] = []

    def start(module: str = "worker", *arguments: str, **environment: str) -> Process:
        log = tmp_path / f"worker-{len(started)}.log"
        process = Process(
            ["-m", module, *arguments], environment_for(settings, NAS_LEASE_SECONDS=LEASE, **environment), log
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.popen.poll() is None:
            process.terminate()


async def test_kill_during_slow_creation(api, data_root, start_worker):
    first = start_worker(NAS_COPY_BANDWIDTH=str(2 * 1024 * 1024))
    file_system_id, directory = await provisioned_file_system(api, data_root)
    payload = os.urandom(6 * 1024 * 1024)
    (directory / "big.bin").write_bytes(payload)
    snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id

    async def copying() -> bool:
        return (await describe_one(api, snapshot_id)).progress > 0

    await wait_until(copying, timeout=30, what="the copy to start")
    first.kill()
    start_worker()

    snapshot = await wait_for_status(api, snapshot_id, timeout=60)

    assert snapshot.status == "accomplished", first.output()
    assert snapshot_entries(data_root, file_system_id) == [snapshot_id]
    assert (data_root / "snapshots" / file_system_id / snapshot_id / "big.bin").read_bytes() == payload


async def test_kill_between_copy_and_commit(api, data_root, start_worker, tmp_path):
    marker = tmp_path / "copied"
    pausing = start_worker("tests.pausing_worker", str(marker))
    file_system_id, directory = await provisioned_file_system(api, data_root)
    (directory / "data.txt").write_text("before the crash")
    snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id

    async def copied() -> bool:
        return marker.exists() and marker.read_text() == snapshot_id

    await wait_until(copied, timeout=30, what="the pausing worker to finish its copy")
    assert (await describe_one(api, snapshot_id)).status == "progressing"
    pausing.kill()
    start_worker()

    snapshot = await wait_for_status(api, snapshot_id, timeout=60)

    assert snapshot.status == "accomplished"
    assert snapshot_entries(data_root, file_system_id) == [snapshot_id]


class FailingDriver(LocalDriver):
    """A local driver whose copies always fail, as a broken storage backend would."""

    async def create_snapshot(self, file_system_id, snapshot_id, on_progress, cancel):
        raise DriverError(f"storage backend rejected snapshot {snapshot_id}: input/output error")


async def dead_letters(amqp_url: str) -> list[dict]:
    """Return the bodies in the dead-letter queue, leaving them there."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        held = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            held.append(message)
        bodies = [json.loads(message.body) for message in held]
        for message in held:
            await message.nack(requeue=True)
    return bodies


async def test_failing_driver_dead_letters(api, settings, database, data_root, amqp_url):
    failing = dataclasses.replace(settings, max_attempts=3)
    worker = Worker(failing, database, driver=FailingDriver(data_root))
    await worker.start()
    try:
        file_system_id, _ = await provisioned_file_system(api, data_root)
        snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id

        snapshot = await wait_for_status(api, snapshot_id, timeout=60)

        async def dead_lettered() -> bool:
            return any(body.get("snapshot_id") == snapshot_id for body in await dead_letters(amqp_url))

        await wait_until(dead_lettered, timeout=30, what="the message to be dead-lettered")
        next_snapshot = await api.snapshots.CreateSnapshot(create(file_system_id))
    finally:
        await worker.stop(grace=5)

    assert snapshot.status == "failed"
    assert "after 3 attempts" in snapshot.status_reason
    assert "input/output error" in snapshot.status_reason
    assert next_snapshot.snapshot_id != snapshot_id


async def test_publish_fails_after_commit(api, settings, database, data_root, database_url):
    """The broker is out of reach when the API commits; the relay publishes once it is back."""
    parts = urlsplit(settings.amqp_url)
    proxy = TcpProxy(parts.hostname, parts.port or 5672)
    port = await proxy.start()
    proxied = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{port}"))
    worker = Worker(dataclasses.replace(settings, amqp_url=proxied), database)
    await worker.start()
    try:
        file_system_id, _ = await provisioned_file_system(api, data_root)
        await proxy.disconnect()
        snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id

        connection = await asyncpg.connect(database_url)
        try:
            waiting = await connection.fetchval(
                "SELECT count(*) FROM outbox WHERE payload->>'snapshot_id' = $1", snapshot_id
            )
        finally:
            await connection.close()
        await asyncio.sleep(2)
        proxy.reconnect()

        snapshot = await wait_for_status(api, snapshot_id, timeout=60)
    finally:
        await worker.stop(grace=5)
        await proxy.close()

    assert waiting == 1
    assert snapshot.status == "accomplished"


async def test_reaper_redrives_lost_message(api, settings, database, data_root, database_url):
    """A creation whose message vanished is sent again once the grace period has passed."""
    from worker.reaper import Reaper

    worker = Worker(settings, database, run_sweeper=False)
    await worker.start()
    try:
        file_system_id, _ = await provisioned_file_system(api, data_root)
        await worker.stop(grace=5)
        snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id
        connection = await asyncpg.connect(database_url)
        try:
            # Lose the message, and age the snapshot past the grace period.
            await connection.execute("DELETE FROM outbox WHERE payload->>'snapshot_id' = $1", snapshot_id)
            await connection.execute(
                "UPDATE snapshots SET created_at = now() - interval '10 minutes' WHERE snapshot_id = $1", snapshot_id
            )
        finally:
            await connection.close()

        handled = await Reaper(database, interval=1, max_attempts=5, max_creation_seconds=86400).reap()
        worker = Worker(settings, database, run_sweeper=False)
        await worker.start()
        snapshot = await wait_for_status(api, snapshot_id, timeout=30)
    finally:
        await worker.stop(grace=5)

    assert handled >= 1
    assert snapshot.status == "accomplished"


async def test_reaper_fails_creation_past_attempts(api, database, database_url):
    from worker.reaper import Reaper

    file_system_id = await api.register()
    snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            """
            UPDATE snapshots SET lease_owner = 'dead-worker', lease_expires_at = now() - interval '1 second',
                                 attempts = 5, last_error = 'disk full'
            WHERE snapshot_id = $1
            """,
            snapshot_id,
        )
    finally:
        await connection.close()

    await Reaper(database, interval=1, max_attempts=5, max_creation_seconds=86400).reap()

    snapshot = await describe_one(api, snapshot_id)
    assert snapshot.status == "failed"
    assert "after 5 attempts: disk full" in snapshot.status_reason


class ProvisionFailingDriver(LocalDriver):
    async def provision_file_system(self, file_system_id):
        raise DriverError(f"cannot create storage for {file_system_id}: read-only file system")


async def test_dead_letters_replayed(api, settings, database, data_root, amqp_url):
    """Work dead-lettered while storage was broken succeeds once replayed."""
    from worker.dead_letters import replay_dead_letters

    broken = Worker(dataclasses.replace(settings, max_attempts=2), database, driver=ProvisionFailingDriver(data_root))
    await broken.start()
    try:
        file_system_id = await api.register()

        async def dead_lettered() -> bool:
            return any(body.get("file_system_id") == file_system_id for body in await dead_letters(amqp_url))

        await wait_until(dead_lettered, timeout=30, what="the provision message to be dead-lettered")
    finally:
        await broken.stop(grace=5)

    healthy = Worker(settings, database)
    await healthy.start()
    try:
        replayed = await replay_dead_letters(settings.amqp_url)

        async def provisioned() -> bool:
            return (data_root / "file-systems" / file_system_id).is_dir()

        await wait_until(provisioned, timeout=30, what="the replayed message to provision storage")
    finally:
        await healthy.stop(grace=5)

    assert replayed >= 1
    assert not any(body.get("file_system_id") == file_system_id for body in await dead_letters(amqp_url))


async def test_shutdown_hands_back_creation(api, settings, database, data_root, database_url):
    """A worker stopped mid-copy releases its lease, so the next worker starts at once."""
    from tests.drivers import GatedDriver

    long_lease = dataclasses.replace(settings, lease_seconds=300)
    driver = GatedDriver(data_root)
    first = Worker(long_lease, database, driver=driver, run_sweeper=False)
    await first.start()
    file_system_id, _ = await provisioned_file_system(api, data_root)
    driver.held.add(file_system_id)
    snapshot_id = (await api.snapshots.CreateSnapshot(create(file_system_id))).snapshot_id

    async def held() -> bool:
        return snapshot_id in driver.waiting

    await wait_until(held, what="the copy to be held")
    await first.stop(grace=0.5)

    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            "SELECT lease_owner, last_error FROM snapshots WHERE snapshot_id = $1", snapshot_id
        )
    finally:
        await connection.close()

    second = Worker(long_lease, database, run_sweeper=False)
    await second.start()
    try:
        # With a 300-second lease, only the hand-back lets this finish in time.
        snapshot = await wait_for_status(api, snapshot_id, timeout=30)
    finally:
        await second.stop(grace=5)

    assert row["lease_owner"] is None
    assert "stopped during the copy" in row["last_error"]
    assert snapshot.status == "accomplished"
