"""TLS, caller identity, tenant isolation, throttling and secrets."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nas.v1 import file_systems_pb2, file_systems_pb2_grpc, snapshots_pb2, snapshots_pb2_grpc
from service.api.server import ApiServer
from service.domain import identity
from service.settings import Settings, SettingsError
from service.store import tokens
from tests.conftest import running_api
from tests.processes import REPOSITORY
from tests.support import error_details, new_file_system_id

GRPCURL = os.path.join(os.path.dirname(sys.executable), "grpcurl")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1, and client certificates for two accounts."""
    directory = tmp_path_factory.mktemp("certificates")
    authority = trustme.CA()
    authority.cert_pem.write_to_path(directory / "ca.pem")
    server = authority.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(directory / "server.key")
    server.cert_chain_pems[0].write_to_path(directory / "server.pem")
    for account in ("acme", "ops"):
        client = authority.issue_cert(f"{account}@clients", common_name=account)
        client.private_key_pem.write_to_path(directory / f"{account}.key")
        client.cert_chain_pems[0].write_to_path(directory / f"{account}.pem")
    return directory


async def issue(database, account: str, role: str = "user") -> str:
    async with database.transaction() as connection:
        _, token = await identity.issue_token(connection, account, role)
    return token


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@contextlib.asynccontextmanager
async def secure_channel(address: str, certificates, account: str | None = None) -> AsyncIterator[grpc.aio.Channel]:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certificates / "ca.pem").read_bytes(),
        private_key=(certificates / f"{account}.key").read_bytes() if account else None,
        certificate_chain=(certificates / f"{account}.pem").read_bytes() if account else None,
    )
    channel = grpc.aio.secure_channel(address, credentials)
    try:
        yield channel
    finally:
        await channel.close()


@contextlib.asynccontextmanager
async def tls_api(settings, database, certificates, **changes) -> AsyncIterator[str]:
    tls_settings = dataclasses.replace(
        settings,
        tls_cert_file=str(certificates / "server.pem"),
        tls_key_file=str(certificates / "server.key"),
        **changes,
    )
    server = ApiServer(tls_settings, database)
    port = await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=1)


async def test_tls_serves_secure_channel(settings, database, certificates):
    async with tls_api(settings, database, certificates) as address:
        async with secure_channel(address, certificates) as channel:
            status = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        async with grpc.aio.insecure_channel(address) as plaintext:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=5)

    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_maps_certificate_to_account(settings, database, certificates):
    async with tls_api(
        settings,
        database,
        certificates,
        tls_client_ca_file=str(certificates / "ca.pem"),
        auth="on",
        admin_accounts=("ops",),
    ) as address:
        async with secure_channel(address, certificates, "ops") as admin_channel:
            file_system_id = new_file_system_id()
            await file_systems_pb2_grpc.FileSystemServiceStub(admin_channel).RegisterFileSystem(
                file_systems_pb2.RegisterFileSystemRequest(file_system_id=file_system_id, capacity=10, account="acme")
            )
        async with secure_channel(address, certificates, "acme") as user_channel:
            created = await snapshots_pb2_grpc.SnapshotServiceStub(user_channel).CreateSnapshot(
                snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id)
            )
            forbidden = await error_details(
                file_systems_pb2_grpc.FileSystemServiceStub(user_channel).DescribeFileSystems(
                    file_systems_pb2.DescribeFileSystemsRequest()
                )
            )
        async with secure_channel(address, certificates) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as no_certificate:
                await health_pb2_grpc.HealthStub(anonymous).Check(health_pb2.HealthCheckRequest(), timeout=5)

    assert created.snapshot_id
    assert forbidden.code == grpc.StatusCode.PERMISSION_DENIED
    assert forbidden.reason == "Forbidden.RAM"
    assert no_certificate.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_beyond_loopback_refused(settings, database):
    server = ApiServer(dataclasses.replace(settings, grpc_address="0.0.0.0:0"), database)

    with pytest.raises(SettingsError, match="NAS_ALLOW_PLAINTEXT"):
        await server.start()


async def test_plaintext_allowed_explicitly_warns(settings, database, caplog):
    allowed = dataclasses.replace(settings, grpc_address="0.0.0.0:0", allow_plaintext=True)
    server = ApiServer(allowed, database)
    await server.start()
    await server.stop(grace=1)

    assert any("plaintext beyond loopback" in record.getMessage() for record in caplog.records)
    assert any("Authentication is on" in record.getMessage() for record in caplog.records)


@pytest.fixture
async def authenticated_api(settings, database):
    async with running_api(dataclasses.replace(settings, auth="on"), database) as api:
        yield api


async def test_missing_credential_unauthenticated(authenticated_api):
    error = await error_details(
        authenticated_api.snapshots.DescribeSnapshots(snapshots_pb2.DescribeSnapshotsRequest())
    )

    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "InvalidCredential"
    assert error.request_id


@pytest.mark.parametrize(
    "authorization",
    ["Bearer nas.aaaaaaaaaaaa." + "0" * 64, "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer "],
    ids=["unknown", "malformed", "basic scheme", "empty"],
)
async def test_bad_credential_unauthenticated(authenticated_api, authorization):
    error = await error_details(
        authenticated_api.snapshots.DescribeSnapshots(
            snapshots_pb2.DescribeSnapshotsRequest(), metadata=(("authorization", authorization),)
        )
    )

    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.reason == "InvalidCredential"


async def test_revoked_token_rejected_at_once(authenticated_api, database):
    token = await issue(database, "acme")
    before = await authenticated_api.snapshots.DescribeSnapshots(
        snapshots_pb2.DescribeSnapshotsRequest(), metadata=bearer(token)
    )
    async with database.transaction() as connection:
        await tokens.revoke(connection, token.split(".")[1])

    error = await error_details(
        authenticated_api.snapshots.DescribeSnapshots(snapshots_pb2.DescribeSnapshotsRequest(), metadata=bearer(token))
    )

    assert before.request_id
    assert error.reason == "InvalidCredential"


async def test_user_token_cannot_call_admin_services(authenticated_api, database):
    token = await issue(database, "acme")

    error = await error_details(
        authenticated_api.file_systems.RegisterFileSystem(
            file_systems_pb2.RegisterFileSystemRequest(file_system_id=new_file_system_id(), capacity=1),
            metadata=bearer(token),
        )
    )

    assert error.code == grpc.StatusCode.PERMISSION_DENIED
    assert error.reason == "Forbidden.RAM"


async def test_other_account_looks_unknown(authenticated_api, database):
    admin = await issue(database, "ops", "admin")
    alice = await issue(database, "alice")
    bob = await issue(database, "bob")
    file_system_id = new_file_system_id()
    await authenticated_api.file_systems.RegisterFileSystem(
        file_systems_pb2.RegisterFileSystemRequest(file_system_id=file_system_id, capacity=10, account="alice"),
        metadata=bearer(admin),
    )
    snapshot_id = (
        await authenticated_api.snapshots.CreateSnapshot(
            snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id), metadata=bearer(alice)
        )
    ).snapshot_id
    unknown_file_system = new_file_system_id()

    create = await error_details(
        authenticated_api.snapshots.CreateSnapshot(
            snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id), metadata=bearer(bob)
        )
    )
    create_unknown = await error_details(
        authenticated_api.snapshots.CreateSnapshot(
            snapshots_pb2.CreateSnapshotRequest(file_system_id=unknown_file_system), metadata=bearer(bob)
        )
    )
    delete = await error_details(
        authenticated_api.snapshots.DeleteSnapshot(
            snapshots_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id), metadata=bearer(bob)
        )
    )
    by_id = await authenticated_api.snapshots.DescribeSnapshots(
        snapshots_pb2.DescribeSnapshotsRequest(snapshot_ids=[snapshot_id]), metadata=bearer(bob)
    )
    by_file_system = await authenticated_api.snapshots.DescribeSnapshots(
        snapshots_pb2.DescribeSnapshotsRequest(file_system_id=file_system_id), metadata=bearer(bob)
    )
    own = await authenticated_api.snapshots.DescribeSnapshots(
        snapshots_pb2.DescribeSnapshotsRequest(snapshot_ids=[snapshot_id]), metadata=bearer(alice)
    )

    assert (create.code, create.reason) == (create_unknown.code, create_unknown.reason)
    assert create.reason == "InvalidFileSystem.NotFound"
    assert create.message.replace(file_system_id, "ID") == create_unknown.message.replace(unknown_file_system, "ID")
    assert delete.reason == "InvalidSnapshot.NotFound"
    assert by_id.total_count == 0
    assert by_file_system.total_count == 0
    assert own.total_count == 1


async def test_throttling_shared_across_replicas(settings, database):
    """Two API replicas count one account's calls together; the call over the limit is throttled."""
    limited = dataclasses.replace(settings, auth="on", throttle_limit=3, throttle_window=3600)
    token = await issue(database, f"throttled-{uuid.uuid4().hex[:8]}")
    # An unknown file system: each call within the limit ends NOT_FOUND.
    request = snapshots_pb2.CreateSnapshotRequest(file_system_id=new_file_system_id())
    async with running_api(limited, database) as first, running_api(limited, database) as second:
        within = [
            await error_details(api.snapshots.CreateSnapshot(request, metadata=bearer(token)))
            for api in (first, second, first)
        ]
        over = await error_details(second.snapshots.CreateSnapshot(request, metadata=bearer(token)))

    assert [error.reason for error in within] == ["InvalidFileSystem.NotFound"] * 3
    assert over.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert over.reason == "Throttling.User"
    assert over.retry_delay is not None
    assert 0 < over.retry_delay <= 3600


async def test_grpcurl_with_tls_and_token(settings, database, certificates):
    import asyncio

    token = await issue(database, "default")
    async with tls_api(settings, database, certificates, auth="on") as address:
        base = [GRPCURL, "-cacert", str(certificates / "ca.pem"), "-max-time", "20"]
        listed = await asyncio.to_thread(subprocess.run, [*base, address, "list"], capture_output=True, text=True)
        anonymous = await asyncio.to_thread(
            subprocess.run,
            [*base, "-d", "{}", address, "nas.v1.SnapshotService/DescribeSnapshots"],
            capture_output=True,
            text=True,
        )
        authorized = await asyncio.to_thread(
            subprocess.run,
            [*base, "-H", f"authorization: Bearer {token}", "-d", "{}", address, "nas.v1.SnapshotService/DescribeSnapshots"],
            capture_output=True,
            text=True,
        )

    assert listed.returncode == 0, listed.stderr
    assert "nas.v1.SnapshotService" in listed.stdout
    assert "Code: Unauthenticated" in anonymous.stderr
    assert "InvalidCredential" in anonymous.stderr
    assert authorized.returncode == 0, authorized.stderr


def test_token_commands(settings):
    environment = {**os.environ, "NAS_DATABASE_URL": settings.database_url}

    def run(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service", "tokens", *arguments],
            env=environment, cwd=REPOSITORY, capture_output=True, text=True, timeout=60,
        )

    created = run("create", "--account", "cli-account", "--admin")
    token = created.stdout.strip().splitlines()[-1]
    token_id = token.split(".")[1]
    listed = run("list")
    revoked = run("revoke", token_id)
    again = run("revoke", token_id)
    bad_account = run("create", "--account", "bad account")

    assert created.returncode == 0, created.stderr
    assert token.startswith("nas.")
    assert f"{token_id}  cli-account  admin" in listed.stdout
    assert token.split(".")[2] not in listed.stdout
    assert revoked.returncode == 0
    assert again.returncode == 1
    assert bad_account.returncode == 1


def test_secret_files_read(tmp_path):
    secret = tmp_path / "database-url"
    secret.write_text("postgresql://nas:s3cret@db:5432/nas\n")

    settings = Settings.from_env({"NAS_DATABASE_URL_FILE": str(secret)})

    assert settings.database_url == "postgresql://nas:s3cret@db:5432/nas"
    assert settings.secrets == ("s3cret", "guest")


def test_secret_in_both_forms_rejected(tmp_path):
    secret = tmp_path / "database-url"
    secret.write_text("postgresql://a@b/c")

    with pytest.raises(SettingsError, match="not both"):
        Settings.from_env({"NAS_DATABASE_URL_FILE": str(secret), "NAS_DATABASE_URL": "postgresql://x@y/z"})


def test_connection_failure_log_hides_password(settings, tmp_path):
    """A worker that cannot reach the broker logs the failure without the broker password."""
    password = "broker-pw-7f3a9c"
    result = subprocess.run(
        [sys.executable, "-m", "worker"],
        env={
            **os.environ,
            "NAS_DATABASE_URL": settings.database_url,
            "NAS_AMQP_URL": f"amqp://guest:{password}@127.0.0.1:9/",
            "NAS_DATA_ROOT": str(tmp_path),
            "NAS_MIGRATE_ON_START": "false",
            "NAS_STARTUP_TIMEOUT": "4",
            "NAS_LOG_LEVEL": "DEBUG",
        },
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1
    assert "RabbitMQ is not reachable" in result.stderr
    assert password not in result.stderr
    assert password not in result.stdout
