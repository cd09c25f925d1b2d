"""Chaos run: creations, deletions, expiries, worker kills and broker restarts together.

    .venv/bin/python -m tests.chaos --seconds 180

Starts an API and two worker processes on a database and a RabbitMQ
virtual host of their own, drives load at them while it SIGKILLs workers
and restarts the RabbitMQ application, then lets everything settle and
checks the invariants:

- never two snapshots in creation for one file system (sampled
  throughout, besides the unique index that forbids it);
- never more live snapshots on a file system than the limit;
- nothing stuck: no snapshot still progressing after the settling time;
- database and disk agree: every accomplished snapshot has its data, and
  no snapshot data exists without a live row.

It stops the machine's RabbitMQ application for a few seconds each time,
so run it where nothing else depends on that broker. It is not part of
the test suite; its last run's figures are on docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import grpc

from nas.v1 import file_systems_pb2, file_systems_pb2_grpc, snapshots_pb2, snapshots_pb2_grpc
from service.settings import Settings
from service.store.migrate import apply_migrations, create_database_if_missing
from tests import support
from tests.processes import Process, environment_for
from tests.services import rabbitmq_down

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672"
FILE_SYSTEMS = 40
SNAPSHOT_LIMIT = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Chaos:
    def __init__(self, seconds: float, directory: Path) -> None:
        run = uuid.uuid4().hex[:10]
        self.seconds = seconds
        self.directory = directory
        self.database_name = f"nas_chaos_{run}"
        self.vhost = f"nas_chaos_{run}"
        self.database_url = f"{POSTGRES_URL}/{self.database_name}"
        self.address = f"127.0.0.1:{free_port()}"
        self.settings = Settings(
            database_url=self.database_url,
            amqp_url=f"{AMQP_URL}/{self.vhost}",
            data_root=directory / "data",
            snapshot_limit=SNAPSHOT_LIMIT,
            throttle_limit=1_000_000,
        )
        self.environment = environment_for(
            self.settings,
            NAS_GRPC_ADDRESS=self.address,
            NAS_SNAPSHOT_LIMIT=str(SNAPSHOT_LIMIT),
            NAS_LEASE_SECONDS="3",
            NAS_SWEEP_INTERVAL="2",
            NAS_LOG_LEVEL="INFO",
        )
        self.workers: list[Process] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.violations: list[str] = []

    # Set-up and tear-down.

    async def start(self) -> None:
        support.rabbitmqctl("add_vhost", self.vhost)
        support.rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        await create_database_if_missing(self.database_url)
        await apply_migrations(self.database_url)
        self.api = Process(["-m", "service"], self.environment, self.directory / "api.log")
        for _ in range(2):
            self.start_worker()
        self.channel = grpc.aio.insecure_channel(self.address)
        await asyncio.wait_for(self.channel.channel_ready(), 60)
        self.snapshots = snapshots_pb2_grpc.SnapshotServiceStub(self.channel)
        self.file_systems = file_systems_pb2_grpc.FileSystemServiceStub(self.channel)

    def start_worker(self) -> None:
        log = self.directory / f"worker-{len(self.workers)}.log"
        self.workers.append(Process(["-m", "worker"], self.environment, log))

    async def stop(self) -> None:
        await self.channel.close()
        for process in [self.api, *self.workers]:
            if process.popen.poll() is None:
                process.terminate()
        support.rabbitmqctl("delete_vhost", self.vhost)
        connection = await asyncpg.connect(f"{POSTGRES_URL}/postgres")
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)')
        finally:
            await connection.close()

    # Load and faults.

    async def run(self) -> None:
        file_system_ids = [f"extreme-chaos{index:04d}" for index in range(FILE_SYSTEMS)]
        for file_system_id in file_system_ids:
            await self.file_systems.RegisterFileSystem(
                file_systems_pb2.RegisterFileSystemRequest(file_system_id=file_system_id, capacity=10)
            )
            directory = self.settings.data_root / "file-systems" / file_system_id
            while not directory.is_dir():
                await asyncio.sleep(0.1)
            (directory / "data.bin").write_bytes(random.randbytes(64 * 1024))

        deadline = time.monotonic() + self.seconds
        await asyncio.gather(
            *(self.client(file_system_ids, deadline) for _ in range(8)),
            self.expire(deadline),
            self.kill_workers(deadline),
            self.restart_broker(deadline),
            self.sample(deadline),
        )

    async def client(self, file_system_ids: list[str], deadline: float) -> None:
        while time.monotonic() < deadline:
            file_system_id = random.choice(file_system_ids)
            try:
                if random.random() < 0.6:
                    retention = random.choice([-1, 1, 30])
                    await self.snapshots.CreateSnapshot(
                        snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id, retention_days=retention),
                        timeout=10,
                    )
                    self.counts["create accepted"] += 1
                else:
                    page = await self.snapshots.DescribeSnapshots(
                        snapshots_pb2.DescribeSnapshotsRequest(file_system_id=file_system_id, page_size=100),
                        timeout=10,
                    )
                    if page.snapshots:
                        victim = random.choice(page.snapshots).snapshot_id
                        await self.snapshots.DeleteSnapshot(
                            snapshots_pb2.DeleteSnapshotRequest(snapshot_id=victim), timeout=10
                        )
                        self.counts["delete accepted"] += 1
            except grpc.aio.AioRpcError as error:
                self.counts[f"rejected {error.code().name}"] += 1
            await asyncio.sleep(random.uniform(0.01, 0.1))

    async def expire(self, deadline: float) -> None:
        """Move some expiries into the past, as if their retention period had ended."""
        while time.monotonic() < deadline:
            await asyncio.sleep(3)
            connection = await asyncpg.connect(self.database_url)
            try:
                result = await connection.execute(
                    """
                    UPDATE snapshots SET expires_at = now() - interval '1 second'
                    WHERE snapshot_id IN (
                        SELECT snapshot_id FROM snapshots
                        WHERE deleted_at IS NULL AND expires_at IS NOT NULL AND random() < 0.3
                    )
                    """
                )
            finally:
                await connection.close()
            self.counts["expiries forced"] += int(result.split()[-1])

    async def kill_workers(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(random.uniform(8, 15))
            alive = [worker for worker in self.workers if worker.popen.poll() is None]
            if alive:
                random.choice(alive).kill()
                self.counts["workers killed"] += 1
                self.start_worker()

    async def restart_broker(self, deadline: float) -> None:
        while time.monotonic() + 30 < deadline:
            await asyncio.sleep(random.uniform(20, 40))
            async with rabbitmq_down():
                await asyncio.sleep(3)
            self.counts["broker restarts"] += 1

    async def sample(self, deadline: float) -> None:
        """Check the two-in-creation and limit invariants while the chaos runs."""
        while time.monotonic() < deadline:
            await self.check_database_invariants()
            await asyncio.sleep(1)

    # Invariants.

    async def check_database_invariants(self) -> None:
        connection = await asyncpg.connect(self.database_url)
        try:
            creating = await connection.fetchval(
                """
                SELECT count(*) FROM (
                    SELECT file_system_id FROM snapshots
                    WHERE status = 'progressing' AND deleted_at IS NULL
                    GROUP BY file_system_id HAVING count(*) > 1
                ) AS doubled
                """
            )
            over_limit = await connection.fetchval(
                """
                SELECT count(*) FROM (
                    SELECT file_system_id FROM snapshots WHERE deleted_at IS NULL
                    GROUP BY file_system_id HAVING count(*) > $1
                ) AS full_file_systems
                """,
                SNAPSHOT_LIMIT,
            )
        finally:
            await connection.close()
        self.counts["invariant samples"] += 1
        if creating:
            self.violations.append(f"{creating} file systems with two snapshots in creation")
        if over_limit:
            self.violations.append(f"{over_limit} file systems over the limit of {SNAPSHOT_LIMIT}")

    async def settle_and_check(self, timeout: float) -> float:
        """Wait until nothing is in flight, then compare database and disk; return the seconds it took."""
        started = time.monotonic()
        connection = await asyncpg.connect(self.database_url)
        try:
            while True:
                progressing = await connection.fetchval(
                    "SELECT count(*) FROM snapshots WHERE status = 'progressing' AND deleted_at IS NULL"
                )
                pending_removal = await connection.fetchval(
                    "SELECT count(*) FROM snapshots WHERE deleted_at IS NOT NULL AND data_removed_at IS NULL"
                )
                outbox = await connection.fetchval("SELECT count(*) FROM outbox")
                if progressing == 0 and pending_removal == 0 and outbox == 0:
                    break
                if time.monotonic() - started > timeout:
                    self.violations.append(
                        f"not settled after {timeout:.0f} s: {progressing} progressing, "
                        f"{pending_removal} deleted with data, {outbox} outbox rows"
                    )
                    break
                await asyncio.sleep(1)

            accomplished = {
                (row["file_system_id"], row["snapshot_id"])
                for row in await connection.fetch(
                    "SELECT file_system_id, snapshot_id FROM snapshots WHERE status = 'accomplished' AND deleted_at IS NULL"
                )
            }
            statuses = collections.Counter(
                row["status"] if row["deleted_at"] is None else f"deleted ({row['deletion_reason']})"
                for row in await connection.fetch("SELECT status, deleted_at, deletion_reason FROM snapshots")
            )
        finally:
            await connection.close()

        on_disk = {
            (path.parent.name, path.name)
            for path in (self.settings.data_root / "snapshots").glob("*/*")
        }
        missing = accomplished - on_disk
        orphaned = on_disk - accomplished
        if missing:
            self.violations.append(f"{len(missing)} accomplished snapshots without data, e.g. {sorted(missing)[:3]}")
        if orphaned:
            self.violations.append(f"{len(orphaned)} snapshot directories without a live row, e.g. {sorted(orphaned)[:3]}")
        self.counts.update({f"final {status}": count for status, count in statuses.items()})
        return time.monotonic() - started


async def main(seconds: float) -> int:
    with tempfile.TemporaryDirectory(prefix="nas-chaos-") as scratch:
        chaos = Chaos(seconds, Path(scratch))
        await chaos.start()
        try:
            started = time.monotonic()
            await chaos.run()
            settle_seconds = await chaos.settle_and_check(timeout=120)
            await chaos.check_database_invariants()
            elapsed = time.monotonic() - started
        finally:
            await chaos.stop()

    print(f"{'event':<40}{'count':>10}")
    for name, count in sorted(chaos.counts.items()):
        print(f"{name:<40}{count:>10}")
    print(f"{'chaos seconds':<40}{seconds:>10.0f}")
    print(f"{'seconds to settle afterwards':<40}{settle_seconds:>10.1f}")
    print(f"{'total seconds':<40}{elapsed:>10.1f}")
    if chaos.violations:
        print("INVARIANTS VIOLATED:")
        for violation in chaos.violations:
            print(f"  {violation}")
        return 1
    print("All invariants held.")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180, help="how long the chaos lasts, in seconds")
    sys.exit(asyncio.run(main(parser.parse_args().seconds)))
