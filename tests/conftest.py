"""Fixtures on the machine's real PostgreSQL and RabbitMQ.

Each test session makes its own database and RabbitMQ virtual host, with
random names, and removes them at the end, so concurrent runs never see
each other's rows or messages. Tests use fresh file-system ids instead of
cleaning tables between tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest

from nas.v1 import file_systems_pb2, file_systems_pb2_grpc, snapshots_pb2_grpc
from service.api.server import ApiServer
from service.settings import Settings
from service.store.database import Database
from service.store.migrate import apply_migrations, create_database_if_missing
from tests import support
from worker.app import Worker

# The broker client logs every frame at DEBUG, which buries the service's own records.
logging.getLogger("aiormq").setLevel(logging.INFO)
logging.getLogger("aio_pika").setLevel(logging.INFO)

POSTGRES_URL = os.environ.get("NAS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
AMQP_BASE_URL = os.environ.get("NAS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
async def database_url(run_id: str) -> AsyncIterator[str]:
    name = f"nas_test_{run_id}"
    url = f"{POSTGRES_URL}/{name}"
    await create_database_if_missing(url)
    await apply_migrations(url)
    yield url

    connection = await asyncpg.connect(f"{POSTGRES_URL}/postgres")
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def amqp_url(run_id: str) -> Iterator[str]:
    vhost = f"nas_test_{run_id}"
    support.rabbitmqctl("add_vhost", vhost)
    support.rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield f"{AMQP_BASE_URL}/{vhost}"
    support.rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-root")


@pytest.fixture(scope="session")
def settings(database_url: str, amqp_url: str, data_root: Path) -> Settings:
    return Settings(
        database_url=database_url,
        amqp_url=amqp_url,
        grpc_address="127.0.0.1:0",
        data_root=data_root,
        database_pool_size=20,
        migrate_on_start=False,
        # Tests make thousands of calls as one account; throttling has its own tests.
        throttle_limit=1_000_000,
    )


@pytest.fixture(scope="session")
async def database(settings: Settings) -> AsyncIterator[Database]:
    database = await Database.connect(
        settings.database_url, pool_size=settings.database_pool_size, timeout=settings.database_timeout
    )
    yield database
    await database.close()


@dataclasses.dataclass
class Api:
    """A running API server and stubs connected to it."""

    address: str
    snapshots: snapshots_pb2_grpc.SnapshotServiceStub
    file_systems: file_systems_pb2_grpc.FileSystemServiceStub
    channel: grpc.aio.Channel

    async def register(self, file_system_id: str | None = None, **fields: object) -> str:
        """Register a file system (extreme, Running and 100 GiB by default) and return its id."""
        file_system_id = file_system_id or support.new_file_system_id()
        fields.setdefault("capacity", 100)
        await self.file_systems.RegisterFileSystem(
            file_systems_pb2.RegisterFileSystemRequest(file_system_id=file_system_id, **fields)
        )
        return file_system_id


@contextlib.asynccontextmanager
async def running_api(settings: Settings, database: Database, **options: float) -> AsyncIterator[Api]:
    """Serve the API in this event loop on a free port until the block ends."""
    server = ApiServer(settings, database, **options)
    port = await server.start()
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(address)
    try:
        yield Api(
            address=address,
            snapshots=snapshots_pb2_grpc.SnapshotServiceStub(channel),
            file_systems=file_systems_pb2_grpc.FileSystemServiceStub(channel),
            channel=channel,
        )
    finally:
        await channel.close()
        await server.stop(grace=1)


@pytest.fixture(scope="session")
async def api(settings: Settings, database: Database) -> AsyncIterator[Api]:
    """The API shared by the session; no worker runs unless a test starts one."""
    async with running_api(settings, database) as api:
        yield api


@pytest.fixture
async def worker(settings: Settings, database: Database) -> AsyncIterator[Worker]:
    """A worker with the local driver, running in this event loop."""
    worker = Worker(settings, database)
    await worker.start()
    yield worker
    await worker.stop(grace=5)
