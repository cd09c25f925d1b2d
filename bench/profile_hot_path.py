"""Profile the hot paths of create_throughput and admission_sql with py-spy, and summarize where the CPU goes.

Usage: .venv/bin/python -m bench.profile_hot_path [--seconds S] [--keep PATH]

1. CreateSnapshot: the API (`python -m service`, no worker) under 64
   callers from a `bench._grpc_load` process, as in create_throughput;
   py-spy samples the API process.
2. Admission: `admit_snapshot` on a `Database` pool of 8 connections, 8
   tasks in this process, as in admission_sql; py-spy samples this process.

py-spy (`pip install py-spy`) samples at 100 Hz without pausing the target
(--nonblocking) and leaves out idle samples, so the shares are of the time a
Python thread was on the CPU or in a system call. The summary gives each
package's share of samples by the innermost frame from that package
("self"), and by any frame from it ("inclusive"), then the functions with
the most self samples. --keep writes the collapsed stacks to files, for a
flame graph tool.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import asyncpg

from bench._common import (
    insert_file_systems,
    log_directory,
    new_run_id,
    print_machine,
    print_table,
    run_bounded,
    start_api,
    temporary_database,
)
from bench._grpc_load import LoadClient
from service.domain.snapshots import admit_snapshot
from service.domain.validation import validate_create_snapshot
from service.store.database import Database

ENTRY_POINT = "entry point"
# Frames are grouped by the first pattern that their file path matches.
PACKAGES = (
    ("<frozen", ENTRY_POINT),
    ("/runpy.py", ENTRY_POINT),
    ("/service/__main__", ENTRY_POINT),
    ("/bench/", ENTRY_POINT),
    ("/service/api/interceptor", "service.api.interceptor"),
    ("/service/api/", "service.api (handlers, status)"),
    ("/service/domain/", "service.domain"),
    ("/service/store/", "service.store"),
    ("/service/logs", "service.logs"),
    ("/service/", "service (other)"),
    ("/asyncpg/", "asyncpg"),
    ("/grpc_status/", "grpc_status"),
    ("/grpc_health/", "grpc_health"),
    ("/grpc/", "grpc"),
    ("/google/protobuf/", "protobuf"),
    ("/prometheus_client/", "prometheus_client"),
    ("/logging/", "logging"),
    ("/asyncio/", "asyncio"),
    ("/selectors.py", "selectors (epoll)"),
    ("/threading.py", "threading (native threads)"),
    ("/json/", "json"),
    ("/uuid.py", "uuid"),
    ("/secrets.py", "secrets/random"),
    ("/random.py", "secrets/random"),
    ("/contextlib.py", "contextlib"),
    ("/dataclasses.py", "dataclasses"),
    ("<string>", "dataclasses"),
)
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*):\d+\)$")


def package_of(path: str) -> str:
    # py-spy names files relative to their sys.path entry, as in "asyncio/events.py".
    rooted = path if path.startswith(("/", "<")) else "/" + path
    for pattern, name in PACKAGES:
        if pattern in rooted:
            return name
    return "other"


def parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if not match:
        return frame, ""
    return match.group("function"), match.group("path")


def summarize(raw: str, title: str) -> None:
    """Print package shares and top functions from py-spy's collapsed stacks."""
    self_by_package: collections.Counter[str] = collections.Counter()
    inclusive_by_package: collections.Counter[str] = collections.Counter()
    self_by_function: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [parse_frame(frame) for frame in stack.split(";")]
        packages = [package_of(path) for _, path in frames]
        for package in set(packages):
            inclusive_by_package[package] += count
        # Self time goes to the innermost frame; standard library helpers
        # called from a package count for that helper's own group.
        function, path = frames[-1]
        self_by_package[packages[-1]] += count
        location = path.split("site-packages/")[-1].split("/main/")[-1]
        self_by_function[f"{function} ({location})"] += count

    if total == 0:
        print(f"\n{title}: no samples")
        return
    # Every stack starts at the entry point, so its inclusive share is always 100 % and is left out.
    rows = [
        [package, f"{100 * self_by_package[package] / total:.1f}", f"{100 * inclusive_by_package[package] / total:.1f}"]
        for package, _ in inclusive_by_package.most_common()
        if package != ENTRY_POINT
    ]
    print_table(f"{title}: {total} samples, share by package in %", ["Package", "Self %", "Inclusive %"], rows)
    rows = [[name, f"{100 * count / total:.1f}"] for name, count in self_by_function.most_common(20)]
    print_table(f"{title}: functions with the most self samples", ["Function (file)", "Self %"], rows)


async def record(pid: int, seconds: float, output: Path) -> str:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    process = await asyncio.create_subprocess_exec(
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "100",
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(output),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, error = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"py-spy failed with status {process.returncode}: {error.decode(errors='replace')}")
    return output.read_text()


async def profile_create(arguments, run_id: str, directory: Path) -> str:
    ids = [f"extreme-bench-{run_id}-{i}" for i in range(int(1500 * (arguments.seconds + 4)))]
    async with temporary_database(run_id, suffix="_create") as database_url:
        connection = await asyncpg.connect(database_url)
        try:
            await insert_file_systems(connection, ids)
        finally:
            await connection.close()
        with log_directory(run_id, keep=False) as logs:
            api, address = await start_api(database_url, logs)
            client = await LoadClient.start(address)
            try:
                # Warm up, then keep the load running for longer than py-spy samples.
                await client.send({"op": "load", "method": "create", "concurrency": 64, "duration": 1, "ids": ids[:1500]})
                load = asyncio.ensure_future(
                    client.send(
                        {"op": "load", "method": "create", "concurrency": 64, "duration": arguments.seconds + 2, "ids": ids[1500:]}
                    )
                )
                await asyncio.sleep(0.5)
                raw = await record(api.pid, arguments.seconds, directory / "create_snapshot_api.txt")
                result = await load
                print(f"CreateSnapshot load: {result['calls'] / result['elapsed']:.0f} calls/s", file=sys.stderr)
            finally:
                await client.close()
                api.stop()
    return raw


async def profile_admission(arguments, run_id: str, directory: Path) -> str:
    connections = 8
    count = int(3000 * (arguments.seconds + 3))
    ids = [f"extreme-pg-{i}" for i in range(count)]
    async with temporary_database(run_id, suffix="_admission") as database_url:
        connection = await asyncpg.connect(database_url)
        try:
            await insert_file_systems(connection, ids)
        finally:
            await connection.close()
        database = await Database.connect(database_url, pool_size=connections, timeout=10)
        try:
            queue = iter(ids)
            stop = asyncio.Event()

            async def run_client() -> int:
                done = 0
                for file_system_id in queue:
                    if stop.is_set():
                        break
                    await admit_snapshot(database, validate_create_snapshot(file_system_id, "", "", None, ""), 64, "default")
                    done += 1
                return done

            clients = [asyncio.ensure_future(run_client()) for _ in range(connections)]
            await asyncio.sleep(1)
            # py-spy runs as a child process, so this event loop keeps admitting while it samples.
            raw = await record(os.getpid(), arguments.seconds, directory / "admission_in_process.txt")
            stop.set()
            done = sum(await asyncio.gather(*clients))
            print(f"Admissions while profiling: {done}", file=sys.stderr)
        finally:
            await database.close()
    return raw


async def main(arguments: argparse.Namespace) -> None:
    await print_machine()
    run_id = new_run_id()
    with tempfile.TemporaryDirectory(prefix=f"nas-bench-{run_id}-") as directory:
        target = Path(arguments.keep) if arguments.keep else Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        create_raw = await profile_create(arguments, run_id, target)
        admission_raw = await profile_admission(arguments, run_id, target)
    summarize(create_raw, "CreateSnapshot at 64 callers, API process")
    summarize(admission_raw, "admit_snapshot on 8 connections, in-process")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_hot_path", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="seconds py-spy samples each path (default %(default)s)")
    parser.add_argument("--keep", metavar="PATH", help="directory to keep the collapsed stacks in")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_bounded(main(parse_arguments()), budget=170)
