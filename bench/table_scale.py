"""DescribeSnapshots pages and the retention sweep's due set with 1,000,000 snapshot rows against 10,000.

Usage: .venv/bin/python -m bench.table_scale [--rounds N] [--repeats N] [--large-rows N]

Two databases get the current schema and the same shape of data, one with
10,000 snapshot rows and one with 1,000,000 (--large-rows), written with
INSERT ... SELECT generate_series:

- 50 snapshots per file system (so 200 and 20,000 file systems), created
  one second apart, newest last;
- every fifth snapshot deleted (its row stays, as DeleteSnapshot leaves it);
- of the live ones, half kept forever and half expiring in 30 days, except
  exactly 500 that expired an hour ago: the due set is the same size in both.

Each operation runs through the project's own code on a `Database` pool:
`describe_snapshots` for the DescribeSnapshots pages and
`snapshots.delete_due` (the sweeper's batch of 500, rolled back after each
run) and `snapshots.oldest_overdue` for the retention sweep. Every round
runs each operation --repeats times on each database, and the order of the
two databases swaps each round. A round's figure is the median of its
repeats, and ratios are taken within a round.

The EXPLAIN (ANALYZE, BUFFERS) plans printed at the end are of the exact
statements and arguments each operation sent, captured with a query logger.
They are custom plans for those arguments; the pool's prepared statements
may switch to a generic plan after five runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import asyncpg

from bench._common import (
    add_common_arguments,
    new_run_id,
    print_machine,
    print_table,
    ratio_summary,
    run_bounded,
    spread,
    temporary_database,
    write_json,
)
from service.domain.snapshots import describe_snapshots
from service.domain.validation import Page
from service.store import snapshots
from service.store.database import Database
from service.store.snapshots import SnapshotFilter

SNAPSHOTS_PER_FILE_SYSTEM = 50
DUE_ROWS = 500
SWEEP_BATCH = 500
SMALL_ROWS = 10_000


class Rollback(Exception):
    """Raised to roll back the transaction of an operation that writes."""


async def fill(database_url: str, rows: int) -> float:
    """Write `rows` snapshots and their file systems; return the seconds it took."""
    file_systems = rows // SNAPSHOTS_PER_FILE_SYSTEM
    started = time.perf_counter()
    connection = await asyncpg.connect(database_url)
    try:
        # The rows are consistent by construction, so the load skips the
        # foreign key triggers, which would check each of them.
        await connection.execute("SET session_replication_role = replica")
        await connection.execute(
            """
            INSERT INTO file_systems (file_system_id, file_system_type, status, capacity_gib, created_at)
            SELECT 'extreme-scale-' || f, 'extreme', 'Running', 100, now() - interval '1 year'
            FROM generate_series(0, $1 - 1) AS f
            """,
            file_systems,
        )
        # Snapshot g belongs to file system g % file_systems and is g seconds
        # younger than the first one. Every fifth is deleted. Of the rest, the
        # ones with g below DUE_ROWS * 2 and odd g are due (an hour ago), other
        # odd g expire in 30 days, even g are kept forever.
        await connection.execute(
            """
            INSERT INTO snapshots (
                snapshot_id, file_system_id, snapshot_name, description, status, progress, retention_days,
                expires_at, source_file_system_size, size_bytes, created_at, completed_at, deleted_at,
                deletion_reason, data_removed_at
            )
            SELECT
                's-extreme-' || lpad(g::text, 17, '0'),
                'extreme-scale-' || (g % $2),
                'name-' || g, '', 'accomplished', 100,
                CASE WHEN g % 2 = 0 THEN -1 ELSE 30 END,
                CASE
                    WHEN g % 2 = 0 THEN NULL
                    WHEN g < $3 THEN now() - interval '1 hour'
                    ELSE now() + interval '30 days'
                END,
                100, 4096,
                now() - interval '1 year' + make_interval(secs => g),
                now() - interval '1 year' + make_interval(secs => g + 1),
                CASE WHEN g % 5 = 0 THEN now() - interval '1 day' END,
                CASE WHEN g % 5 = 0 THEN 'user' END,
                CASE WHEN g % 5 = 0 THEN now() - interval '1 day' END
            FROM generate_series(0, $1 - 1) AS g
            """,
            rows,
            file_systems,
            # Odd g below this bound that are not multiples of 5: exactly DUE_ROWS of them.
            _due_bound(),
        )
        await connection.execute("VACUUM ANALYZE file_systems")
        await connection.execute("VACUUM ANALYZE snapshots")
        due = await connection.fetchval(
            "SELECT count(*) FROM snapshots WHERE deleted_at IS NULL AND expires_at <= now()"
        )
        if due != DUE_ROWS:
            raise RuntimeError(f"the due set has {due} rows, expected {DUE_ROWS}")
    finally:
        await connection.close()
    return time.perf_counter() - started


def _due_bound() -> int:
    """Return the bound B such that exactly DUE_ROWS odd numbers below B are not multiples of 5."""
    count = 0
    g = 0
    while count < DUE_ROWS:
        if g % 2 == 1 and g % 5 != 0:
            count += 1
        g += 1
    return g


def operations(target_file_system: str, snapshot_ids: list[str]) -> dict[str, Callable[[Database], Awaitable[object]]]:
    async def sweep_due_set(database: Database) -> object:
        try:
            async with database.transaction() as connection:
                picked = await snapshots.delete_due(connection, None, SWEEP_BATCH)
                if len(picked) != DUE_ROWS:
                    raise RuntimeError(f"the sweep picked {len(picked)} rows, expected {DUE_ROWS}")
                raise Rollback()
        except Rollback:
            return None

    async def oldest_overdue(database: Database) -> object:
        async with database.transaction() as connection:
            return await snapshots.oldest_overdue(connection, None)

    return {
        "DescribeSnapshots by file system, page 1 of 10": lambda database: describe_snapshots(
            database, SnapshotFilter(account="default", file_system_id=target_file_system), Page(1, 10)
        ),
        "DescribeSnapshots by 100 snapshot ids, page 1 of 100": lambda database: describe_snapshots(
            database, SnapshotFilter(account="default", snapshot_ids=snapshot_ids), Page(1, 100)
        ),
        "DescribeSnapshots unfiltered, page 1 of 10 with total count": lambda database: describe_snapshots(
            database, SnapshotFilter(account="default"), Page(1, 10)
        ),
        "DescribeSnapshots unfiltered, page 500 of 10 with total count": lambda database: describe_snapshots(
            database, SnapshotFilter(account="default"), Page(500, 10)
        ),
        "Retention sweep: delete_due batch of 500 (rolled back)": sweep_due_set,
        "Retention sweep: oldest_overdue": oldest_overdue,
    }


async def capture(database_url: str, operation: Callable[[Database], Awaitable[object]]) -> list[tuple[str, tuple]]:
    """Run the operation on a one-connection pool with a query logger; return the statements it sent."""
    database = await Database.connect(database_url, pool_size=1, timeout=60)
    statements: list[tuple[str, tuple]] = []
    try:
        async with database.pool.acquire() as connection:
            connection.add_query_logger(lambda record: statements.append((record.query, record.args)))
        statements.clear()
        await operation(database)
    finally:
        await database.close()
    skipped = ("BEGIN", "COMMIT", "ROLLBACK", "SELECT PG_ADVISORY_UNLOCK_ALL")
    return [(query, args) for query, args in statements if not query.strip().upper().startswith(skipped)]


async def explain(database_url: str, statements: list[tuple[str, tuple]]) -> list[str]:
    connection = await asyncpg.connect(database_url)
    plans = []
    try:
        for query, args in statements:
            transaction = connection.transaction()
            await transaction.start()
            try:
                rows = await connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {query}", *args)
            finally:
                await transaction.rollback()
            plans.append("\n".join(row[0] for row in rows))
    finally:
        await connection.close()
    return plans


async def main(arguments: argparse.Namespace) -> None:
    machine = await print_machine()
    run_id = new_run_id()
    sizes = {"small": SMALL_ROWS, "large": arguments.large_rows}
    results: list[dict] = []
    plans: dict[str, dict[str, list[str]]] = {}
    fill_seconds: dict[str, float] = {}

    async with temporary_database(run_id, suffix="_small") as small_url, temporary_database(
        run_id, suffix="_large"
    ) as large_url:
        urls = {"small": small_url, "large": large_url}
        for size, rows in sizes.items():
            fill_seconds[size] = await fill(urls[size], rows)
            print(f"Filled the {size} database with {rows:,} snapshots in {fill_seconds[size]:.1f} s", file=sys.stderr)

        # File system 7 has 50 snapshots in both databases, and the 100 ids are of live snapshots.
        target = "extreme-scale-7"
        snapshot_ids = [f"s-extreme-{g:017d}" for g in range(1, 1000, 10) if g % 5 != 0][:100]
        chosen = operations(target, snapshot_ids)

        databases = {size: await Database.connect(url, pool_size=2, timeout=60) for size, url in urls.items()}
        try:
            for name, operation in chosen.items():
                plans[name] = {}
                for size in sizes:
                    await operation(databases[size])
                    statements = await capture(urls[size], operation)
                    plans[name][size] = [
                        f"-- {' '.join(query.split())}\n-- arguments: {list(args)}\n{plan}"
                        for (query, args), plan in zip(statements, await explain(urls[size], statements))
                    ]

            for index in range(arguments.rounds):
                for name, operation in chosen.items():
                    order = list(sizes) if index % 2 == 0 else list(reversed(sizes))
                    for size in order:
                        timings = []
                        for _ in range(arguments.repeats):
                            started = time.perf_counter()
                            await operation(databases[size])
                            timings.append(1000 * (time.perf_counter() - started))
                        results.append(
                            {"operation": name, "size": size, "round": index, "ms": statistics.median(timings)}
                        )
                print(f"round {index} done", file=sys.stderr)
        finally:
            for database in databases.values():
                await database.close()

    report(arguments, results, sizes, fill_seconds)
    print("\nEXPLAIN (ANALYZE, BUFFERS) of the statements each operation sends\n")
    for name, by_size in plans.items():
        for size, statement_plans in by_size.items():
            print(f"### {name}: {sizes[size]:,} rows\n")
            for plan in statement_plans:
                print("```text")
                print(plan)
                print("```\n")
    write_json(
        arguments.json,
        {"machine": machine, "arguments": vars(arguments), "results": results, "plans": plans, "fill_seconds": fill_seconds},
    )


def report(arguments: argparse.Namespace, results: list[dict], sizes: dict[str, int], fill_seconds: dict[str, float]) -> None:
    def select(name: str, size: str) -> list[float]:
        chosen = [r for r in results if r["operation"] == name and r["size"] == size]
        return [r["ms"] for r in sorted(chosen, key=lambda r: r["round"])]

    rows = []
    for name in dict.fromkeys(r["operation"] for r in results):
        small = select(name, "small")
        large = select(name, "large")
        rows.append([name, spread(small), spread(large), ratio_summary(large, small)])
    print_table(
        f"Latency in ms through the project's code: median (min-max) over {arguments.rounds} rounds "
        f"of the median of {arguments.repeats} runs",
        ["Operation", f"{sizes['small']:,} rows", f"{sizes['large']:,} rows", "Large / small"],
        rows,
    )
    print(
        f"\nFilling took {fill_seconds['small']:.1f} s for {sizes['small']:,} rows and "
        f"{fill_seconds['large']:.1f} s for {sizes['large']:,} rows (INSERT ... SELECT, then VACUUM ANALYZE)."
    )


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.table_scale", description=__doc__.splitlines()[0])
    add_common_arguments(parser, rounds=5)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each operation per round (default %(default)s)")
    parser.add_argument(
        "--large-rows", type=int, default=1_000_000, help="snapshot rows in the large database (default %(default)s)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_bounded(main(parse_arguments()), budget=175)
