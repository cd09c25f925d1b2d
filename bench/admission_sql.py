"""The admission transaction alone, through the project's pool, against pgbench running the same SQL.

Usage: .venv/bin/python -m bench.admission_sql [--rounds N] [--transactions N]

The subject is `service.domain.snapshots.admit_snapshot` called by C asyncio
tasks in this process on a `Database` pool of C connections. The baseline is
pgbench with C connections running the statements that admit_snapshot sends,
with no Python in between: the file-system row lock (FOR UPDATE), the count
of snapshots, the snapshot insert, the outbox insert, NOTIFY and COMMIT.

The pgbench script is not written by hand. The run first admits one snapshot
with a query logger on the pool's connection and records each statement and
its arguments. It turns them into a script in which the ids are computed
from a per-transaction counter, so every transaction locks a file system of
its own. The statement that the pool sends after the transaction (its
connection reset) is left out of the script and reported.

Four more variants show where the time goes. None of them is in the
service; they are prototypes of changes, built only in this run's database:

- pgbench without the NOTIFY;
- `admit_snapshot` on a pool that skips asyncpg's connection reset query;
- the whole admission as one PL/pgSQL function (`bench_admit`, the same
  checks and writes, without the client token lookup), called in one round
  trip from asyncpg and from pgbench.

Rounds run every variant once at each connection count, in an order that
alternates from round to round, and ratios are taken within a round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
import unittest.mock
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from bench._common import (
    add_common_arguments,
    insert_file_systems,
    new_run_id,
    print_machine,
    print_table,
    ratio_summary,
    run_bounded,
    spread,
    temporary_database,
    write_json,
)
from service.domain import ids
from service.domain.snapshots import admit_snapshot
from service.domain.validation import validate_create_snapshot
from service.store.database import Database

CONNECTION_COUNTS = (1, 4, 8)
SNAPSHOT_LIMIT = 64
FILE_SYSTEM_PREFIX = "extreme-pg-"

VARIANTS = {
    "project": "admit_snapshot through Database (asyncpg)",
    "pgbench": "pgbench, same statements",
    "pgbench_no_notify": "pgbench, same statements without NOTIFY",
    "project_no_reset": "prototype: admit_snapshot, pool without reset query",
    "function_asyncpg": "prototype: bench_admit() from asyncpg, one round trip",
    "pgbench_function": "prototype: bench_admit() from pgbench",
}
PGBENCH_VARIANTS = ("pgbench", "pgbench_no_notify", "pgbench_function")

# The admission as one function: the checks and writes of
# service.domain.snapshots._admit without the client token lookup, returning
# "OK" or the NAS code of the first rule broken.
ADMIT_FUNCTION = """
CREATE FUNCTION bench_admit(
    p_file_system_id text, p_snapshot_id text, p_snapshot_name text, p_description text,
    p_retention_days integer, p_snapshot_limit integer
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    found_file_system record;
    total bigint;
    creating bigint;
BEGIN
    SELECT file_system_type, status, capacity_gib, released_at,
           (expired_time IS NOT NULL AND expired_time <= now()) AS expired
    INTO found_file_system
    FROM file_systems WHERE file_system_id = p_file_system_id FOR UPDATE;
    IF NOT FOUND OR found_file_system.released_at IS NOT NULL THEN
        RETURN 'InvalidFileSystem.NotFound';
    END IF;
    IF found_file_system.file_system_type <> 'extreme' THEN
        RETURN 'InvalidFileSystemType.NotSupported';
    END IF;
    IF found_file_system.status <> 'Running' OR found_file_system.expired THEN
        RETURN 'Instance.IncorrectStatus';
    END IF;

    SELECT count(*), count(*) FILTER (WHERE status = 'progressing') INTO total, creating
    FROM snapshots WHERE file_system_id = p_file_system_id AND deleted_at IS NULL;
    IF total >= p_snapshot_limit THEN
        RETURN 'QuotaExceeded.Snapshot';
    END IF;
    IF creating > 0 THEN
        RETURN 'OperationConflict.SnapshotCreating';
    END IF;

    INSERT INTO snapshots (
        snapshot_id, file_system_id, snapshot_name, description, status,
        retention_days, expires_at, source_file_system_size
    )
    VALUES (
        p_snapshot_id, p_file_system_id, p_snapshot_name, p_description, 'progressing', p_retention_days,
        CASE WHEN p_retention_days = -1 THEN NULL ELSE now() + make_interval(hours => 24 * p_retention_days) END,
        found_file_system.capacity_gib
    );
    INSERT INTO outbox (routing_key, payload)
    VALUES ('snapshot.create', jsonb_build_object('snapshot_id', p_snapshot_id, 'file_system_id', p_file_system_id));
    PERFORM pg_notify('nas_outbox', '');
    RETURN 'OK';
END
$$;
"""


def file_system_id(number: int) -> str:
    return f"{FILE_SYSTEM_PREFIX}{number}"


async def capture_admission(database_url: str) -> tuple[list[tuple[str, tuple]], str, str]:
    """Admit one snapshot with a query logger attached; return the statements and the ids used."""
    connection = await asyncpg.connect(database_url)
    try:
        await insert_file_systems(connection, [file_system_id(0)])
    finally:
        await connection.close()

    database = await Database.connect(database_url, pool_size=1, timeout=10)
    statements: list[tuple[str, tuple]] = []
    try:
        async with database.pool.acquire() as pooled:
            pooled.add_query_logger(lambda record: statements.append((record.query, record.args)))
        statements.clear()
        admission = await admit_snapshot(
            database, validate_create_snapshot(file_system_id(0), "", "", None, ""), SNAPSHOT_LIMIT, "default"
        )
    finally:
        await database.close()
    return statements, file_system_id(0), admission.snapshot_id


def _sql_literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__} {value!r}")


def _sql_value(value: object, file_system: str, snapshot: str) -> str:
    """Return an SQL expression for an argument, with the ids replaced by expressions of :n."""
    file_system_expression = f"('{FILE_SYSTEM_PREFIX}' || CAST(:n AS text))"
    snapshot_expression = "('s-extreme-' || lpad(CAST(:n AS text), 17, '0'))"
    if not isinstance(value, str) or (file_system not in value and snapshot not in value):
        return f"({_sql_literal(value)})"
    parts = []
    for piece in re.split(f"({re.escape(file_system)}|{re.escape(snapshot)})", value):
        if piece == file_system:
            parts.append(file_system_expression)
        elif piece == snapshot:
            parts.append(snapshot_expression)
        elif piece:
            parts.append(_sql_literal(piece))
    return "(" + " || ".join(parts) + ")"


def pgbench_statements(
    statements: list[tuple[str, tuple]], file_system: str, snapshot: str
) -> tuple[list[str], list[str]]:
    """Turn the captured transaction, BEGIN to COMMIT, into pgbench statements on one line each.

    An admission without BEGIN is one statement in its own implicit
    transaction, and is taken whole. Also returns the statements sent
    after the transaction, which stay out of the script.
    """
    starts = [i for i, (query, _) in enumerate(statements) if query.strip().upper().startswith("BEGIN")]
    ends = [i for i, (query, _) in enumerate(statements) if query.strip().upper().startswith("COMMIT")]
    begin = starts[0] if starts else 0
    commit = ends[0] if ends else 0
    converted = []
    for query, arguments in statements[begin : commit + 1]:
        text = re.sub(
            r"\$(\d+)", lambda match: _sql_value(arguments[int(match.group(1)) - 1], file_system, snapshot), query
        )
        converted.append(" ".join(text.split()).rstrip(";"))
    return converted, [query for query, _ in statements[commit + 1 :]]


def pgbench_script(statements: list[str], variant: str) -> str:
    header = ["\\set i :i + 1", "\\set n :base + :client_id * :per_client + :i"]
    if variant == "pgbench_no_notify":
        statements = [s for s in statements if not s.upper().startswith("NOTIFY")]
    if variant == "pgbench_function":
        statements = [
            f"SELECT bench_admit(('{FILE_SYSTEM_PREFIX}' || CAST(:n AS text)), "
            f"('s-extreme-' || lpad(CAST(:n AS text), 17, '0')), '', '', -1, {SNAPSHOT_LIMIT})"
        ]
    return "\n".join(header + [s + ";" for s in statements]) + "\n"


async def _skip_reset(connection: asyncpg.Connection) -> None:
    """Return a connection to the pool without asyncpg's reset query.

    asyncpg still rolls back an open transaction and drops listeners first.
    """


@contextlib.asynccontextmanager
async def database_without_reset(database_url: str, pool_size: int) -> AsyncIterator[Database]:
    """Open a Database with the project's settings on a pool that skips the reset query."""
    create_pool = asyncpg.create_pool
    with unittest.mock.patch("asyncpg.create_pool", functools.partial(create_pool, reset=_skip_reset)):
        database = await Database.connect(database_url, pool_size=pool_size, timeout=10)
    try:
        yield database
    finally:
        await database.close()


class Bench:
    def __init__(self, database_url: str, scripts: dict[str, Path], transactions: int, pgbench: str) -> None:
        self.database_url = database_url
        self.scripts = scripts
        self.transactions = transactions
        self.pgbench = pgbench
        # File systems 1 .. next_number - 1 are taken.
        self.next_number = 1

    def take(self, count: int) -> int:
        base = self.next_number - 1
        self.next_number += count
        return base

    async def run_pgbench(self, variant: str, connections: int) -> dict:
        per_client = self.transactions // connections
        base = self.take(per_client * connections)
        url = urlsplit(self.database_url)
        command = [
            self.pgbench,
            "--no-vacuum",
            "--protocol=prepared",
            f"--file={self.scripts[variant]}",
            f"--client={connections}",
            f"--jobs={min(connections, 2)}",
            f"--transactions={per_client}",
            "--define=i=0",
            f"--define=base={base}",
            f"--define=per_client={per_client}",
            f"--host={url.hostname}",
            f"--port={url.port or 5432}",
            f"--username={url.username or 'postgres'}",
            url.path.lstrip("/"),
        ]

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(process.communicate(), 120)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)

        text = output.decode(errors="replace")
        match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", text)
        failed = re.search(r"number of failed transactions: (\d+)", text)
        if process.returncode != 0 or match is None or (failed and int(failed.group(1)) > 0):
            raise RuntimeError(f"pgbench failed with status {process.returncode}:\n{text}")

        transactions = per_client * connections
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return {"tps": float(match.group(1)), "client_cpu_ms_per_transaction": 1000 * cpu / transactions}

    async def run_project(self, database: Database, connections: int, use_function: bool = False) -> dict:
        per_client = self.transactions // connections
        base = self.take(per_client * connections)
        parameters = [
            [
                validate_create_snapshot(file_system_id(base + client * per_client + i), "", "", None, "")
                for i in range(1, per_client + 1)
            ]
            for client in range(connections)
        ]

        async def run_client(batch: list) -> None:
            for params in batch:
                await admit_snapshot(database, params, SNAPSHOT_LIMIT, "default")

        async def run_client_with_function(batch: list) -> None:
            for params in batch:
                outcome = await database.pool.fetchval(
                    "SELECT bench_admit($1, $2, $3, $4, $5, $6)",
                    params.file_system_id,
                    ids.new_snapshot_id(),
                    params.snapshot_name,
                    params.description,
                    params.retention_days,
                    SNAPSHOT_LIMIT,
                )
                if outcome != "OK":
                    raise RuntimeError(f"bench_admit rejected {params.file_system_id}: {outcome}")

        if use_function:
            run_client = run_client_with_function

        cpu_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(run_client(batch) for batch in parameters))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        transactions = per_client * connections
        return {"tps": transactions / elapsed, "client_cpu_ms_per_transaction": 1000 * cpu / transactions}


async def main(arguments: argparse.Namespace) -> None:
    machine = await print_machine()
    pgbench = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    run_id = new_run_id()
    rounds: list[dict] = []

    async with temporary_database(run_id) as database_url:
        statements, file_system, snapshot = await capture_admission(database_url)
        transaction, after_commit = pgbench_statements(statements, file_system, snapshot)

        per_round = arguments.transactions * len(VARIANTS) * len(CONNECTION_COUNTS)
        needed = per_round * (arguments.rounds + 1)
        connection = await asyncpg.connect(database_url)
        try:
            await insert_file_systems(connection, [file_system_id(n) for n in range(1, needed + 1)])
            await connection.execute(ADMIT_FUNCTION)
            await connection.execute("ANALYZE")
        finally:
            await connection.close()

        with tempfile.TemporaryDirectory(prefix=f"nas-bench-{run_id}-") as directory:
            scripts = {}
            for variant in PGBENCH_VARIANTS:
                scripts[variant] = Path(directory) / f"{variant}.sql"
                scripts[variant].write_text(pgbench_script(transaction, variant))
            print_statements(transaction, after_commit, scripts["pgbench"].read_text())

            bench = Bench(database_url, scripts, arguments.transactions, pgbench)
            async with contextlib.AsyncExitStack() as stack:
                pools = {}
                for connections in CONNECTION_COUNTS:
                    pools["project", connections] = await Database.connect(
                        database_url, pool_size=connections, timeout=10
                    )
                    stack.push_async_callback(pools["project", connections].close)
                    pools["no_reset", connections] = await stack.enter_async_context(
                        database_without_reset(database_url, connections)
                    )

                async def run(variant: str, connections: int) -> dict:
                    if variant == "project":
                        return await bench.run_project(pools["project", connections], connections)
                    if variant == "project_no_reset":
                        return await bench.run_project(pools["no_reset", connections], connections)
                    if variant == "function_asyncpg":
                        return await bench.run_project(pools["no_reset", connections], connections, use_function=True)
                    return await bench.run_pgbench(variant, connections)

                # Warm-up: open every pool connection and prepare the statements.
                for connections in CONNECTION_COUNTS:
                    for variant in VARIANTS:
                        await run(variant, connections)

                order = list(VARIANTS)
                for index in range(arguments.rounds):
                    for connections in CONNECTION_COUNTS:
                        for variant in order if index % 2 == 0 else reversed(order):
                            result = await run(variant, connections)
                            result.update(variant=variant, connections=connections, round=index)
                            rounds.append(result)
                            print(
                                f"round={index} connections={connections} {variant:<18} {result['tps']:8.1f} tps",
                                file=sys.stderr,
                            )

    report(arguments, rounds)
    write_json(
        arguments.json,
        {"machine": machine, "arguments": vars(arguments), "statements": transaction, "rounds": rounds},
    )


def print_statements(transaction: list[str], after_commit: list[str], script: str) -> None:
    print(f"\nadmit_snapshot sends {len(transaction)} statements from BEGIN to COMMIT, one round trip each,")
    print(f"and the pool sends {len(after_commit)} more when the connection goes back to it:")
    for query in after_commit:
        print(f"    {' '.join(query.split())}")
    print("\npgbench script (same statements, ids computed from :n):\n")
    print(script)


def report(arguments: argparse.Namespace, rounds: list[dict]) -> None:
    def select(variant: str, connections: int, field: str = "tps") -> list[float]:
        chosen = [r for r in rounds if r["variant"] == variant and r["connections"] == connections]
        return [r[field] for r in sorted(chosen, key=lambda r: r["round"])]

    rows = []
    for connections in CONNECTION_COUNTS:
        for variant, label in VARIANTS.items():
            tps = select(variant, connections)
            rows.append(
                [
                    connections,
                    label,
                    spread(tps, 0),
                    spread([1000 * connections / value for value in tps]),
                    spread(select(variant, connections, "client_cpu_ms_per_transaction"), 3),
                ]
            )
    print_table(
        f"Transactions per second: median (min-max) of {arguments.rounds} rounds of "
        f"{arguments.transactions} transactions; each transaction on its own file system",
        ["Connections", "Variant", "TPS", "Mean latency ms (C/TPS)", "Client CPU ms per transaction"],
        rows,
    )

    ratio_rows = []
    for connections in CONNECTION_COUNTS:
        baseline = select("pgbench", connections)
        ratio_rows.append(
            [connections, *(ratio_summary(select(variant, connections), baseline) for variant in VARIANTS if variant != "pgbench")]
        )
    print_table(
        "Ratios to pgbench with the same statements, within each round: median (min-max)",
        ["Connections", *(VARIANTS[variant] for variant in VARIANTS if variant != "pgbench")],
        ratio_rows,
    )

    goal_rows = []
    for connections in CONNECTION_COUNTS:
        ratio = statistics.median(p / b for p, b in zip(select("project", connections), select("pgbench", connections)))
        goal_rows.append(
            [f"admit_snapshot >= 0.8 x pgbench at {connections} connections", f"{ratio:.2f} x", "yes" if ratio >= 0.8 else "no"]
        )
    print_table("Goal (reported, not asserted)", ["Goal", "Measured", "Met"], goal_rows)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.admission_sql", description=__doc__.splitlines()[0])
    add_common_arguments(parser, rounds=3)
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop for the in-process variants (default %(default)s); uvloop needs `pip install uvloop`",
    )
    parser.add_argument(
        "--transactions", type=int, default=1000, help="transactions per variant and round (default %(default)s)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_arguments()
    run_bounded(main(arguments), budget=170, loop=arguments.loop)
