"""Stop and start the machine's PostgreSQL and RabbitMQ, always leaving them running.

Each helper waits until the server accepts connections again before it
returns, pass or fail, so a test that stops a server never leaves it
down for the tests after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

__all__ = ["postgres_down", "rabbitmq_down"]


def _run(*command: str, timeout: float = 120) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=timeout)


def _postgres_version() -> str:
    return sorted(Path("/etc/postgresql").iterdir(), key=lambda path: [int(part) for part in path.name.split(".")])[-1].name


def _wait(check: list[str], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(check, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come back within {timeout} s")
        time.sleep(0.5)


def _start_postgres() -> None:
    _run("pg_ctlcluster", "--skip-systemctl-redirect", _postgres_version(), "main", "start")
    _wait(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], 60, "PostgreSQL")


def _start_rabbitmq() -> None:
    _run("rabbitmqctl", "-q", "start_app")
    _wait(["rabbitmq-diagnostics", "-q", "check_running"], 120, "RabbitMQ")


@contextlib.asynccontextmanager
async def postgres_down() -> AsyncIterator[None]:
    """Stop PostgreSQL (fast shutdown, which ends every session) for the duration of the block."""
    await asyncio.to_thread(
        _run, "pg_ctlcluster", "--skip-systemctl-redirect", _postgres_version(), "main", "stop", "-m", "fast"
    )
    try:
        yield
    finally:
        await asyncio.to_thread(_start_postgres)


@contextlib.asynccontextmanager
async def rabbitmq_down() -> AsyncIterator[None]:
    """Stop the RabbitMQ application, which closes every connection, for the duration of the block."""
    await asyncio.to_thread(_run, "rabbitmqctl", "-q", "stop_app")
    try:
        yield
    finally:
        await asyncio.to_thread(_start_rabbitmq)
