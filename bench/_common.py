"""Helpers shared by the benchmarks.

They start the API and the worker as child processes, make a PostgreSQL
database and a RabbitMQ virtual host with random names and remove them
afterwards, and compute and print the statistics. Every server binds to
127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import asyncpg
import psutil

from service.store.migrate import apply_migrations, create_database_if_missing

__all__ = [
    "AMQP_BASE_URL",
    "POSTGRES_URL",
    "REPOSITORY",
    "ServiceProcess",
    "add_common_arguments",
    "backend_processes",
    "cpu_seconds",
    "insert_file_systems",
    "log_directory",
    "machine_description",
    "new_run_id",
    "percentile",
    "print_machine",
    "print_table",
    "ratio_summary",
    "run_bounded",
    "spread",
    "start_api",
    "start_worker",
    "temporary_database",
    "temporary_vhost",
    "total_cpu_seconds",
    "write_json",
]

REPOSITORY = Path(__file__).resolve().parent.parent
# A run on an exported tree (`git archive`), which has no .git, names its
# commit in NAS_BENCH_COMMIT.
POSTGRES_URL = os.environ.get("NAS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
AMQP_BASE_URL = os.environ.get("NAS_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")

# Seconds a child process may take to start or to stop after SIGTERM.
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
# Cleanup retries this many times, this many seconds apart, while a server is down.
_CLEANUP_ATTEMPTS = 30
_CLEANUP_DELAY = 2.0


def new_run_id() -> str:
    """Return a random suffix for the names of one run's database, virtual host and files."""
    return uuid.uuid4().hex[:10]


# Databases, virtual hosts and file systems.


@contextlib.asynccontextmanager
async def temporary_database(run_id: str, *, suffix: str = "") -> AsyncIterator[str]:
    """Create the database nas_bench_<run_id><suffix> with the current schema, yield its URL, then drop it."""
    name = f"nas_bench_{run_id}{suffix}"
    url = f"{POSTGRES_URL}/{name}"
    try:
        await create_database_if_missing(url)
        await apply_migrations(url)
        yield url
    finally:
        await _drop_database(name)


async def _drop_database(name: str) -> None:
    """Drop the database, retrying for a minute while PostgreSQL is unreachable.

    Test suites on this machine stop PostgreSQL for a few seconds now and then.
    """
    for attempt in range(_CLEANUP_ATTEMPTS):
        try:
            connection = await asyncpg.connect(f"{POSTGRES_URL}/postgres", timeout=10)
            try:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await connection.close()
            return
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as exc:
            if attempt == _CLEANUP_ATTEMPTS - 1:
                print(f"Could not drop database {name}: {exc}. Drop it by hand.", file=sys.stderr)
                raise
            await asyncio.sleep(_CLEANUP_DELAY)


def rabbitmqctl(*arguments: str) -> str:
    result = subprocess.run(["rabbitmqctl", "-q", *arguments], check=True, capture_output=True, text=True, timeout=60)
    return result.stdout


@contextlib.contextmanager
def temporary_vhost(run_id: str) -> Iterator[str]:
    """Create the RabbitMQ virtual host nas_bench_<run_id> for guest, yield its AMQP URL, then delete it."""
    vhost = f"nas_bench_{run_id}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{AMQP_BASE_URL}/{vhost}"
    finally:
        # Retry while the broker is stopped, as for the database.
        for attempt in range(_CLEANUP_ATTEMPTS):
            try:
                rabbitmqctl("delete_vhost", vhost)
                break
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                if attempt == _CLEANUP_ATTEMPTS - 1:
                    print(f"Could not delete virtual host {vhost}: {exc}. Delete it by hand.", file=sys.stderr)
                    raise
                time.sleep(_CLEANUP_DELAY)


async def insert_file_systems(connection: asyncpg.Connection, file_system_ids: Sequence[str]) -> None:
    """Insert Running extreme file systems of 100 GiB in one statement.

    This writes the rows that RegisterFileSystem writes, without its
    provisioning message, which only a worker would read. Where the schema
    records provisioning, the rows are marked provisioned.
    """
    provisioned_column = await connection.fetchval(
        """
        SELECT count(*) > 0 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'file_systems' AND column_name = 'provisioned_at'
        """
    )
    await connection.execute(
        f"""
        INSERT INTO file_systems (file_system_id, file_system_type, status, capacity_gib
                                  {", provisioned_at" if provisioned_column else ""})
        SELECT id, 'extreme', 'Running', 100 {", now()" if provisioned_column else ""}
        FROM unnest($1::text[]) AS id
        """,
        list(file_system_ids),
    )


@contextlib.contextmanager
def log_directory(run_id: str, keep: bool) -> Iterator[Path]:
    """Yield a directory for the child processes' logs, removed afterwards unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=f"nas-bench-{run_id}-"))
    try:
        yield path
    finally:
        if keep:
            print(f"Logs kept in {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


# Child processes.


class ServiceProcess:
    """A `python -m service` or `python -m worker` child process whose output goes to a log file."""

    def __init__(self, module: str, environment: dict[str, str], log: Path) -> None:
        self.module = module
        self.log = log
        with open(log, "ab") as output:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", module],
                env=environment,
                cwd=REPOSITORY,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
            )
        self.process = psutil.Process(self.popen.pid)

    @property
    def pid(self) -> int:
        return self.popen.pid

    async def wait_for_log(self, pattern: str, timeout: float = _START_TIMEOUT) -> re.Match[str]:
        """Wait until a line of the log matches `pattern`; raise if the process exits first or time runs out."""
        expression = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = expression.search(self.log.read_text(errors="replace"))
            if match:
                return match
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"python -m {self.module} exited with status {self.popen.returncode}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"python -m {self.module} logged no line matching {pattern!r} in {timeout} s")
            await asyncio.sleep(0.05)

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Send SIGTERM and wait; kill the process if it has not exited within `timeout` seconds."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def service_environment(database_url: str, **settings: str) -> dict[str, str]:
    """Return the environment for a child process: the database, no migrations on start, and `settings`."""
    return {
        **os.environ,
        "NAS_DATABASE_URL": database_url,
        "NAS_MIGRATE_ON_START": "false",
        # One account makes every call here; the benchmarks measure the
        # service, not the per-account limit.
        "NAS_THROTTLE_LIMIT": "1000000",
        **settings,
    }


async def start_api(
    database_url: str, log_dir: Path, name: str = "api", module: str = "service", **settings: str
) -> tuple[ServiceProcess, str]:
    """Start `python -m service` (or `module`) on a free loopback port; return the process and its address."""
    environment = service_environment(database_url, NAS_GRPC_ADDRESS="127.0.0.1:0", **settings)
    api = ServiceProcess(module, environment, log_dir / f"{name}.log")
    try:
        match = await api.wait_for_log(r"gRPC API listening on \S+ \(port (\d+)\)")
    except BaseException:
        api.stop()
        raise
    return api, f"127.0.0.1:{match.group(1)}"


async def start_worker(
    database_url: str, amqp_url: str, data_root: Path, log_dir: Path, name: str = "worker", **settings: str
) -> ServiceProcess:
    """Start `python -m worker` with the local driver and wait until it consumes."""
    environment = service_environment(database_url, NAS_AMQP_URL=amqp_url, NAS_DATA_ROOT=str(data_root), **settings)
    worker = ServiceProcess("worker", environment, log_dir / f"{name}.log")
    try:
        await worker.wait_for_log(r"Worker \S+ started")
    except BaseException:
        worker.stop()
        raise
    return worker


def cpu_seconds(process: psutil.Process) -> float:
    """Return the user and system CPU seconds the process used so far, its threads included."""
    times = process.cpu_times()
    return times.user + times.system


async def backend_processes(connection: asyncpg.Connection, database: str) -> list[psutil.Process]:
    """Return the PostgreSQL backends connected to `database` now, for CPU accounting."""
    pids = await connection.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    found = []
    for row in pids:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(row["pid"]))
    return found


def total_cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    """Sum the CPU seconds of the processes that still exist."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += cpu_seconds(process)
    return total


# Statistics and output.


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the `fraction` quantile (0 to 1) with linear interpolation, as numpy's default does."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def spread(values: Sequence[float], digits: int = 2) -> str:
    """Format the median and the range of per-round values: "12.3 (11.9-12.8)"."""
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def ratio_summary(subject: Sequence[float], baseline: Sequence[float], digits: int = 2) -> str:
    """Format the per-round ratios subject/baseline of paired rounds as median and range."""
    ratios = [s / b for s, b in zip(subject, baseline) if b]
    return spread(ratios, digits)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table, so that the output can go into docs/benchmarks.md as it is."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(header)), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    print(f"\n{title}\n")
    print("| " + " | ".join(str(header).ljust(width) for header, width in zip(headers, widths)) + " |")
    print("| " + " | ".join("-" * width for width in widths) + " |")
    for row in cells:
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |")
    sys.stdout.flush()


def _command_output(command: Sequence[str]) -> str | None:
    """Return the command's standard output, or None if it could not run or failed."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPOSITORY)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


async def machine_description() -> list[tuple[str, str]]:
    """Describe the machine, the servers and the commit that a run measured."""
    connection = await asyncpg.connect(f"{POSTGRES_URL}/postgres")
    try:
        postgres = await connection.fetchval("SHOW server_version")
    finally:
        await connection.close()
    # --no-optional-locks keeps `git status` from refreshing the index, which
    # other people editing this tree may be using.
    changed = _command_output(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"])
    if changed is None:
        changed_count = "unknown (not a git checkout)"
    else:
        changed_count = str(len([line for line in changed.splitlines() if line]))
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    commit = os.environ.get("NAS_BENCH_COMMIT") or _command_output(["git", "rev-parse", "HEAD"]) or "unknown"
    return [
        ("CPU", f"{_cpu_model()}, {psutil.cpu_count(logical=True)} logical cores"),
        ("Memory", f"{psutil.virtual_memory().total / 2**30:.1f} GiB"),
        ("Kernel", platform.release()),
        ("Python", platform.python_version()),
        ("PostgreSQL", postgres),
        ("RabbitMQ", _command_output(["rabbitmqctl", "-q", "version"]) or "unknown"),
        ("Commit", commit),
        ("Tracked files changed since the commit", changed_count),
        ("Load average at start (1, 5, 15 min)", load),
    ]


async def print_machine() -> list[tuple[str, str]]:
    description = await machine_description()
    print_table("Machine", ["What", "Value"], description)
    return description


def write_json(path: str | None, results: dict[str, object]) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2, default=str) + "\n")


def add_common_arguments(parser: argparse.ArgumentParser, rounds: int) -> None:
    parser.add_argument("--rounds", type=int, default=rounds, help="rounds of each measurement (default %(default)s)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH, for bench.plots")
    parser.add_argument("--keep-logs", action="store_true", help="keep the child processes' logs")


def run_bounded(main: object, budget: float, loop: str = "asyncio") -> None:
    """Run the coroutine `main`, cancelling it after `budget` seconds.

    Cancellation runs the cleanup in its finally blocks, so the database and
    virtual host are removed even when a run overruns. `loop` "uvloop" runs
    it on uvloop's event loop instead of asyncio's.
    """

    async def bounded() -> None:
        try:
            async with asyncio.timeout(budget):
                await main  # type: ignore[misc]
        except TimeoutError:
            print(f"Stopped: the run took longer than its budget of {budget:.0f} s", file=sys.stderr)
            raise SystemExit(1) from None

    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(bounded())
    else:
        asyncio.run(bounded())
