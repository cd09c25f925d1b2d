"""A gRPC load generator that runs in its own process, so that its CPU use is apart from the server's.

The parent starts `python -m bench._grpc_load ADDRESS` through `LoadClient`
and sends one JSON command per line on stdin. The child keeps one grpc.aio
channel open across commands and writes one JSON result per line on stdout.

Commands:

- `{"op": "load", "method": M, "concurrency": C, "duration": D, "ids": [...]}`
  runs C callers in a loop for D seconds. For CreateSnapshot each call takes
  the next file system id from `ids`, and the callers stop early when the
  ids run out.
- `{"op": "burst", "method": M, "ids": [...]}` starts one call per id at
  once and waits for every response.

M is "noop" (`grpc.health.v1.Health/Check` of "liveness") or "create"
(`nas.v1.SnapshotService/CreateSnapshot`). A result counts the calls by
status: "OK", or the NAS code that starts the error message, or the gRPC
code when the message has none.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
from collections.abc import Iterator, Sequence

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nas.v1 import snapshots_pb2, snapshots_pb2_grpc

__all__ = ["LoadClient"]

# Seconds one call may take before the client gives up on it.
_CALL_TIMEOUT = 60.0


class _Caller:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._health = health_pb2_grpc.HealthStub(channel)
        self._snapshots = snapshots_pb2_grpc.SnapshotServiceStub(channel)
        self._health_request = health_pb2.HealthCheckRequest(service="liveness")

    async def call(self, method: str, file_system_id: str | None) -> str:
        """Make one call and return its outcome: "OK", a NAS code or a gRPC code."""
        try:
            if method == "noop":
                await self._health.Check(self._health_request, timeout=_CALL_TIMEOUT)
            else:
                await self._snapshots.CreateSnapshot(
                    snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id), timeout=_CALL_TIMEOUT
                )
        except grpc.aio.AioRpcError as error:
            details = error.details() or ""
            code, separator, _ = details.partition(":")
            return code if separator and " " not in code else error.code().name
        return "OK"


async def _load(caller: _Caller, method: str, concurrency: int, duration: float, ids: Sequence[str]) -> dict:
    file_system_ids: Iterator[str | None] = iter(ids) if method == "create" else iter(lambda: None, 0)
    outcomes: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []

    async def run_caller(deadline: float) -> None:
        while time.perf_counter() < deadline:
            file_system_id = next(file_system_ids, "")
            if file_system_id == "":
                return
            started = time.perf_counter()
            outcome = await caller.call(method, file_system_id)
            latencies.append(time.perf_counter() - started)
            outcomes[outcome] += 1

    started = time.perf_counter()
    await asyncio.gather(*(run_caller(started + duration) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "calls": len(latencies),
        "outcomes": dict(outcomes),
        "elapsed": elapsed,
        "latencies_ms": [round(value * 1000, 3) for value in latencies],
    }


async def _burst(caller: _Caller, method: str, ids: Sequence[str]) -> dict:
    outcomes: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    accepted_by_file_system: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()

    async def one(file_system_id: str) -> None:
        outcome = await caller.call(method, file_system_id)
        latencies.append(time.perf_counter() - started)
        outcomes[outcome] += 1
        if outcome == "OK":
            accepted_by_file_system[file_system_id] += 1

    await asyncio.gather(*(one(file_system_id) for file_system_id in ids))
    return {
        "calls": len(latencies),
        "outcomes": dict(outcomes),
        "elapsed": time.perf_counter() - started,
        "latencies_ms": [round(value * 1000, 3) for value in latencies],
        "most_accepted_on_one_file_system": max(accepted_by_file_system.values(), default=0),
        "file_systems_with_an_accepted_call": len(accepted_by_file_system),
    }


async def _serve(address: str) -> None:
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        caller = _Caller(channel)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            command = json.loads(line)
            if command["op"] == "load":
                result = await _load(
                    caller, command["method"], command["concurrency"], command["duration"], command.get("ids", [])
                )
            elif command["op"] == "burst":
                result = await _burst(caller, command["method"], command["ids"])
            else:
                raise ValueError(f"unknown command {command['op']!r}")
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()


class LoadClient:
    """The parent's handle on one load generator process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        # For the parent's CPU accounting.
        self.process = psutil.Process(process.pid)

    @classmethod
    async def start(cls, address: str) -> LoadClient:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench._grpc_load",
            address,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        return cls(process)

    @property
    def pid(self) -> int:
        return self._process.pid

    async def send(self, command: dict) -> dict:
        """Send one command and return its result."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write((json.dumps(command) + "\n").encode())
        await self._process.stdin.drain()
        line = await self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited with status {await self._process.wait()}")
        return json.loads(line)

    async def close(self) -> None:
        if self._process.returncode is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1]))
