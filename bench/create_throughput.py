"""CreateSnapshot throughput and latency against a no-op call on the same server.

Usage: .venv/bin/python -m bench.create_throughput [--rounds N] [--duration S] [--clients N]

The API runs as `python -m service` in a child process, with no worker, so
every accepted snapshot stays progressing. The load comes from separate
grpc.aio client processes (`bench._grpc_load`, one by default). Each
CreateSnapshot call names a file system of its own, inserted before the
run, so no call waits for another one's row lock or is rejected because a
creation is in progress. The baseline is `grpc.health.v1.Health/Check` on
the same port, which passes through the same server, interceptor and
client but touches no database.

Rounds alternate baseline and subject (ABBA order) at each caller count, and
every ratio is taken within a pair of rounds, so load from other work on the
machine affects both sides of a ratio alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import sys
import time

import asyncpg

from bench._common import (
    ServiceProcess,
    add_common_arguments,
    backend_processes,
    insert_file_systems,
    log_directory,
    new_run_id,
    percentile,
    print_machine,
    print_table,
    ratio_summary,
    run_bounded,
    spread,
    start_api,
    temporary_database,
    total_cpu_seconds,
    write_json,
)
from bench._grpc_load import LoadClient

CALLER_COUNTS = (1, 16, 64)
METHOD_LABELS = {
    "noop": "Health/Check (no-op)",
    "create": "CreateSnapshot",
    "create_uvloop": "CreateSnapshot, API on uvloop (prototype)",
}


@dataclasses.dataclass
class Target:
    """A measured method: what the clients call, and on which API process."""

    wire_method: str
    clients: list[LoadClient]
    api: ServiceProcess


class FileSystemPool:
    """Ids of registered file systems, each handed out once."""

    def __init__(self, ids: list[str]) -> None:
        self._ids = ids
        self._next = 0

    def take(self, count: int) -> list[str]:
        ids = self._ids[self._next : self._next + count]
        self._next += len(ids)
        return ids

    @property
    def used(self) -> int:
        return self._next

    @property
    def size(self) -> int:
        return len(self._ids)


async def run_round(
    target: Target,
    callers: int,
    duration: float,
    pool: FileSystemPool,
    ids_per_client: int,
    database_processes: list,
) -> dict:
    """Run one timed round split over the target's clients; return throughput, latencies and CPU use."""
    method = target.wire_method
    server_processes = [target.api.process]
    active = target.clients[: min(len(target.clients), callers)]
    shares = [callers // len(active) + (1 if i < callers % len(active) else 0) for i in range(len(active))]

    server_before = total_cpu_seconds(server_processes)
    client_before = total_cpu_seconds([client.process for client in active])
    database_before = total_cpu_seconds(database_processes)
    started = time.perf_counter()
    commands = [
        {
            "op": "load",
            "method": method,
            "concurrency": share,
            "duration": duration,
            "ids": pool.take(ids_per_client) if method == "create" else [],
        }
        for share in shares
    ]
    results = await asyncio.gather(*(client.send(command) for client, command in zip(active, commands)))
    wall = time.perf_counter() - started
    server_cpu = total_cpu_seconds(server_processes) - server_before
    client_cpu = total_cpu_seconds([client.process for client in active]) - client_before
    database_cpu = total_cpu_seconds(database_processes) - database_before

    latencies = [value for result in results for value in result["latencies_ms"]]
    outcomes: dict[str, int] = {}
    for result in results:
        for outcome, count in result["outcomes"].items():
            outcomes[outcome] = outcomes.get(outcome, 0) + count
    elapsed = max(result["elapsed"] for result in results)
    accepted = outcomes.get("OK", 0)
    return {
        "callers": callers,
        "calls": len(latencies),
        "outcomes": outcomes,
        "elapsed": elapsed,
        "throughput": accepted / elapsed,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "server_cpu_percent": 100 * server_cpu / wall,
        "client_cpu_percent": 100 * client_cpu / wall,
        "database_cpu_percent": 100 * database_cpu / wall,
        "server_cpu_ms_per_call": 1000 * server_cpu / max(1, len(latencies)),
        "client_cpu_ms_per_call": 1000 * client_cpu / max(1, len(latencies)),
        "database_cpu_ms_per_call": 1000 * database_cpu / max(1, len(latencies)),
    }


async def main(arguments: argparse.Namespace) -> None:
    machine = await print_machine()
    run_id = new_run_id()
    ids = [f"extreme-bench-{run_id}-{i}" for i in range(arguments.file_systems)]
    creating_methods = 2 if arguments.uvloop else 1
    # Each client gets at most this many ids per round: more than it can use
    # in `duration` seconds, fewer than would exhaust the pool early.
    ids_per_client = (
        arguments.file_systems // ((arguments.rounds * len(CALLER_COUNTS) + 1) * creating_methods) // arguments.clients
    )

    async with temporary_database(run_id) as database_url:
        monitor = await asyncpg.connect(database_url)
        try:
            await insert_file_systems(monitor, ids)
            with log_directory(run_id, arguments.keep_logs) as logs, contextlib.ExitStack() as stops:
                targets: dict[str, Target] = {}
                api, address = await start_api(database_url, logs)
                stops.callback(api.stop)
                clients = [await LoadClient.start(address) for _ in range(arguments.clients)]
                all_clients = list(clients)
                targets["noop"] = Target("noop", clients, api)
                targets["create"] = Target("create", clients, api)
                if arguments.uvloop:
                    uvloop_api, uvloop_address = await start_api(
                        database_url, logs, name="api-uvloop", module="bench._uvloop_service"
                    )
                    stops.callback(uvloop_api.stop)
                    uvloop_clients = [await LoadClient.start(uvloop_address) for _ in range(arguments.clients)]
                    all_clients += uvloop_clients
                    targets["create_uvloop"] = Target("create", uvloop_clients, uvloop_api)
                try:
                    rounds = await measure(arguments, targets, monitor, FileSystemPool(ids), ids_per_client)
                finally:
                    for client in all_clients:
                        await client.close()
        finally:
            await monitor.close()

    report(arguments, rounds, list(targets))
    write_json(arguments.json, {"machine": machine, "arguments": vars(arguments), "rounds": rounds})


async def measure(
    arguments, targets: dict[str, Target], monitor, pool: FileSystemPool, ids_per_client: int
) -> list[dict]:
    own_pid = await monitor.fetchval("SELECT pg_backend_pid()")
    database = await monitor.fetchval("SELECT current_database()")

    # Warm up: open the API's pool connections and fill their statement caches.
    for target in targets.values():
        await run_round(target, 64, 1.0, pool, ids_per_client, [])

    rounds = []
    methods = list(targets)
    for callers in CALLER_COUNTS:
        for index in range(arguments.rounds):
            database_processes = [p for p in await backend_processes(monitor, database) if p.pid != own_pid]
            for method in methods if index % 2 == 0 else reversed(methods):
                result = await run_round(
                    targets[method], callers, arguments.duration, pool, ids_per_client, database_processes
                )
                result.update(method=method, round=index)
                rounds.append(result)
                print(
                    f"callers={callers:>2} round={index} {method:<13} {result['throughput']:8.1f}/s "
                    f"p50={result['p50_ms']:.2f} ms p99={result['p99_ms']:.2f} ms outcomes={result['outcomes']}",
                    file=sys.stderr,
                )
    print(f"File systems used: {pool.used} of {pool.size}", file=sys.stderr)
    return rounds


def report(arguments: argparse.Namespace, rounds: list[dict], methods: list[str]) -> None:
    def select(method: str, callers: int, field: str) -> list[float]:
        ordered = sorted((r for r in rounds if r["method"] == method and r["callers"] == callers), key=lambda r: r["round"])
        return [r[field] for r in ordered]

    rows = []
    for callers in CALLER_COUNTS:
        for method in methods:
            failures = sum(
                count
                for r in rounds
                if r["method"] == method and r["callers"] == callers
                for outcome, count in r["outcomes"].items()
                if outcome != "OK"
            )
            rows.append(
                [
                    callers,
                    METHOD_LABELS[method],
                    spread(select(method, callers, "throughput"), 0),
                    spread(select(method, callers, "p50_ms")),
                    spread(select(method, callers, "p99_ms")),
                    spread(select(method, callers, "server_cpu_percent"), 0),
                    spread(select(method, callers, "client_cpu_percent"), 0),
                    spread(select(method, callers, "database_cpu_percent"), 0),
                    failures,
                ]
            )
    print_table(
        f"Throughput and latency: median (min-max) of {arguments.rounds} rounds of {arguments.duration:g} s, "
        f"{arguments.clients} client process(es); CPU in % of one core",
        ["Callers", "Method", "Calls/s", "p50 ms", "p99 ms", "API CPU %", "Client CPU %", "PostgreSQL CPU %", "Errors"],
        rows,
    )

    ratio_rows = []
    for callers in CALLER_COUNTS:
        create = select("create", callers, "throughput")
        noop = select("noop", callers, "throughput")
        p50 = select("create", callers, "p50_ms")
        p99 = select("create", callers, "p99_ms")
        cpu_create = select("create", callers, "server_cpu_ms_per_call")
        cpu_noop = select("noop", callers, "server_cpu_ms_per_call")
        database_cpu = select("create", callers, "database_cpu_ms_per_call")
        row = [
            callers,
            ratio_summary(create, noop),
            ratio_summary(p99, p50),
            spread(cpu_create),
            spread(cpu_noop),
            spread(database_cpu),
        ]
        if "create_uvloop" in methods:
            row.append(ratio_summary(select("create_uvloop", callers, "throughput"), create))
        ratio_rows.append(row)
    headers = [
        "Callers",
        "CreateSnapshot / no-op calls/s",
        "CreateSnapshot p99 / p50",
        "API CPU ms per CreateSnapshot",
        "API CPU ms per no-op",
        "PostgreSQL CPU ms per CreateSnapshot",
    ]
    if "create_uvloop" in methods:
        headers.append("uvloop / asyncio CreateSnapshot calls/s")
    print_table("Ratios within rounds: median (min-max)", headers, ratio_rows)

    throughput_ratio = statistics.median(
        c / n for c, n in zip(select("create", 64, "throughput"), select("noop", 64, "throughput"))
    )
    tail_ratio = statistics.median(p99 / p50 for p50, p99 in zip(select("create", 64, "p50_ms"), select("create", 64, "p99_ms")))
    print_table(
        "Goals at 64 callers (reported, not asserted)",
        ["Goal", "Measured", "Met"],
        [
            ["CreateSnapshot calls/s >= 0.5 x no-op", f"{throughput_ratio:.2f} x", "yes" if throughput_ratio >= 0.5 else "no"],
            ["CreateSnapshot p99 < 5 x p50", f"{tail_ratio:.2f} x", "yes" if tail_ratio < 5 else "no"],
        ],
    )


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.create_throughput", description=__doc__.splitlines()[0])
    add_common_arguments(parser, rounds=4)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per round (default %(default)s)")
    parser.add_argument("--clients", type=int, default=1, help="load generator processes (default %(default)s)")
    parser.add_argument(
        "--file-systems", type=int, default=60_000, help="file systems inserted before the run (default %(default)s)"
    )
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="also measure CreateSnapshot on a second API process on uvloop (needs `pip install uvloop`)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_bounded(main(parse_arguments()), budget=170)
