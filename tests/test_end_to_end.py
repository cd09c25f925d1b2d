"""The real processes, driven with the real grpcurl binary as an operator would."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests import support
from tests.conftest import AMQP_BASE_URL, POSTGRES_URL

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
REPOSITORY = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Deployment:
    """An API and a worker process with their own database, virtual host and data root."""

    def __init__(self, tmp_path: Path) -> None:
        run = uuid.uuid4().hex[:10]
        self.database_name = f"nas_e2e_{run}"
        self.vhost = f"nas_e2e_{run}"
        self.address = f"127.0.0.1:{free_port()}"
        self.data_root = tmp_path / "data"
        self.logs = tmp_path
        self.environment = {
            **os.environ,
            "NAS_DATABASE_URL": f"{POSTGRES_URL}/{self.database_name}",
            "NAS_AMQP_URL": f"{AMQP_BASE_URL}/{self.vhost}",
            "NAS_GRPC_ADDRESS": self.address,
            "NAS_DATA_ROOT": str(self.data_root),
            "NAS_LOG_LEVEL": "DEBUG",
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        support.rabbitmqctl("add_vhost", self.vhost)
        support.rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        migrate = subprocess.run(
            [sys.executable, "-m", "service", "migrate"],
            env=self.environment, cwd=REPOSITORY, capture_output=True, timeout=60,
        )
        assert migrate.returncode == 0, migrate.stderr.decode()
        for name, module in (("api", "service"), ("worker", "worker")):
            with open(self.logs / f"{name}.log", "wb") as log:
                self.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", module], env=self.environment, cwd=REPOSITORY, stdout=log, stderr=log
                )

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> dict[str, int]:
        """SIGTERM both processes and return their exit codes."""
        codes = {}
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes

    async def drop(self) -> None:
        support.rabbitmqctl("delete_vhost", self.vhost)
        connection = await asyncpg.connect(f"{POSTGRES_URL}/postgres")
        try:
            await connection.execute(f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)')
        finally:
            await connection.close()


def grpcurl(address: str, *arguments: str, data: dict | None = None) -> subprocess.CompletedProcess[str]:
    command = [GRPCURL, "-plaintext", "-max-time", "20"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    return subprocess.run([*command, address, *arguments], capture_output=True, text=True, timeout=60)


def call(address: str, method: str, data: dict) -> dict:
    result = grpcurl(address, method, data=data)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture
async def deployment(tmp_path):
    deployment = Deployment(tmp_path)
    deployment.start()
    try:
        deadline = time.monotonic() + 60
        while grpcurl(deployment.address, "grpc.health.v1.Health/Check", data={"service": "readiness"}).returncode:
            for name, process in deployment.processes.items():
                assert process.poll() is None, f"{name} exited early:\n{deployment.log(name)}"
            assert time.monotonic() < deadline, "the API did not become ready:\n" + deployment.log("api")
            await asyncio.sleep(0.3)
        yield deployment
    finally:
        codes = deployment.stop()
        await deployment.drop()
    assert codes == {"api": 0, "worker": 0}, deployment.log("api") + deployment.log("worker")


async def test_operator_walkthrough(deployment):
    address = deployment.address

    # Reflection lists and describes the services with no proto files at hand.
    listed = grpcurl(address, "list")
    assert listed.returncode == 0, listed.stderr
    services = listed.stdout.split()
    assert "nas.v1.SnapshotService" in services
    assert "nas.v1.FileSystemService" in services
    assert "grpc.health.v1.Health" in services
    described = grpcurl(address, "describe", "nas.v1.CreateSnapshotRequest")
    assert "retention_days" in described.stdout

    # Register a file system; a worker creates its directory.
    file_system_id = "extreme-" + uuid.uuid4().hex[:8]
    registered = call(address, "nas.v1.FileSystemService/RegisterFileSystem", {"file_system_id": file_system_id, "capacity": 100})
    assert registered["file_system"]["status"] == "Running"
    directory = deployment.data_root / "file-systems" / file_system_id
    deadline = time.monotonic() + 30
    while not directory.is_dir():
        assert time.monotonic() < deadline, deployment.log("worker")
        await asyncio.sleep(0.2)
    (directory / "ledger.csv").write_text("2026-12-04,100\n")

    # Snapshot it and watch it go from progressing to accomplished.
    created = call(
        address,
        "nas.v1.SnapshotService/CreateSnapshot",
        {"file_system_id": file_system_id, "snapshot_name": "FinanceJoshua", "retention_days": 30},
    )
    snapshot_id = created["snapshot_id"]
    assert created["request_id"]
    statuses = []
    deadline = time.monotonic() + 30
    while True:
        page = call(address, "nas.v1.SnapshotService/DescribeSnapshots", {"snapshot_ids": [snapshot_id]})
        snapshot = page["snapshots"][0]
        statuses.append(snapshot["status"])
        if snapshot["status"] != "progressing":
            break
        assert time.monotonic() < deadline, deployment.log("worker")
        await asyncio.sleep(0.1)
    assert snapshot["status"] == "accomplished"
    assert snapshot["progress"] == 100
    assert snapshot["completed_time"].endswith("Z")

    # The snapshot keeps the data of that moment.
    (directory / "ledger.csv").write_text("changed\n")
    copy = deployment.data_root / "snapshots" / file_system_id / snapshot_id / "ledger.csv"
    assert copy.read_text() == "2026-12-04,100\n"

    # Errors print the gRPC code, the NAS code as reason, and the request id.
    bad_name = grpcurl(
        address, "nas.v1.SnapshotService/CreateSnapshot", data={"file_system_id": file_system_id, "snapshot_name": "auto_1"}
    )
    assert bad_name.returncode != 0
    assert "Code: InvalidArgument" in bad_name.stderr
    assert '"reason":"InvalidParameter.SnapshotName"' in bad_name.stderr.replace(" ", "")
    assert "RequestId" in bad_name.stderr

    unknown = grpcurl(address, "nas.v1.SnapshotService/CreateSnapshot", data={"file_system_id": "extreme-00000000"})
    assert "Code: NotFound" in unknown.stderr
    assert "InvalidFileSystem.NotFound" in unknown.stderr

    # Request ids appear in the API's log.
    assert created["request_id"] in deployment.log("api")
