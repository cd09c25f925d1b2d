"""1,000 concurrent CreateSnapshot calls on one file system, and on 64, against calls that do not contend.

Usage: .venv/bin/python -m bench.contention [--rounds N] [--calls N]

The API runs as `python -m service` with no worker, so the first accepted
creation on a file system stays in progress and every later call on it must
be rejected with OperationConflict.SnapshotCreating. One client process
(`bench._grpc_load`) starts all calls of a burst at once and waits for every
response. Each round runs four bursts of the same size, in an order that
rotates from round to round:

- no-op: `grpc.health.v1.Health/Check`, no database work;
- distinct: CreateSnapshot on as many file systems as calls, all accepted;
- one file system: all calls on one file system, exactly one accepted;
- 64 file systems: calls spread evenly over 64, exactly one accepted on each.

Every burst uses file systems that no earlier burst touched.
"""

from __future__ import annotations

import argparse
import sys

import asyncpg

from bench._common import (
    add_common_arguments,
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
    write_json,
)
from bench._grpc_load import LoadClient

SCENARIOS = {
    "noop": "no-op Health/Check",
    "distinct": "CreateSnapshot, one file system per call",
    "one": "CreateSnapshot, 1 file system",
    "sixty_four": "CreateSnapshot, 64 file systems",
}
# Accepted calls each scenario must end with, as a function of the burst size.
EXPECTED_ACCEPTED = {"noop": lambda calls: calls, "distinct": lambda calls: calls, "one": lambda _: 1, "sixty_four": lambda _: 64}
FILE_SYSTEMS_PER_BURST = {"noop": lambda calls: 0, "distinct": lambda calls: calls, "one": lambda _: 1, "sixty_four": lambda _: 64}


async def main(arguments: argparse.Namespace) -> None:
    machine = await print_machine()
    run_id = new_run_id()
    bursts = arguments.rounds + 1
    needed = bursts * sum(count(arguments.calls) for count in FILE_SYSTEMS_PER_BURST.values())
    all_ids = [f"extreme-bench-{run_id}-{i}" for i in range(needed)]
    ids = iter(all_ids)
    rounds: list[dict] = []

    async with temporary_database(run_id) as database_url:
        connection = await asyncpg.connect(database_url)
        try:
            await insert_file_systems(connection, all_ids)
        finally:
            await connection.close()

        with log_directory(run_id, arguments.keep_logs) as logs:
            api, address = await start_api(database_url, logs)
            client = await LoadClient.start(address)
            try:
                order = list(SCENARIOS)
                # Round -1 is a warm-up and is not reported.
                for index in range(-1, arguments.rounds):
                    rotation = order[index % len(order) :] + order[: index % len(order)]
                    for scenario in rotation:
                        file_systems = [next(ids) for _ in range(FILE_SYSTEMS_PER_BURST[scenario](arguments.calls))]
                        targets = [file_systems[i % len(file_systems)] if file_systems else "" for i in range(arguments.calls)]
                        result = await client.send(
                            {"op": "burst", "method": "noop" if scenario == "noop" else "create", "ids": targets}
                        )
                        result.update(scenario=scenario, round=index)
                        result["p50_ms"] = percentile(result["latencies_ms"], 0.5)
                        result["p99_ms"] = percentile(result["latencies_ms"], 0.99)
                        result["last_answer_ms"] = 1000 * result["elapsed"]
                        del result["latencies_ms"]
                        print(
                            f"round={index} {scenario:<10} last answer {result['last_answer_ms']:7.1f} ms "
                            f"outcomes={result['outcomes']}",
                            file=sys.stderr,
                        )
                        if index >= 0:
                            rounds.append(result)
            finally:
                await client.close()
                api.stop()

    report(arguments, rounds)
    write_json(arguments.json, {"machine": machine, "arguments": vars(arguments), "rounds": rounds})


def correct(result: dict, calls: int) -> bool:
    """Tell whether every call got a response and the right number were accepted, at most one per file system."""
    scenario = result["scenario"]
    accepted = result["outcomes"].get("OK", 0)
    answered = sum(result["outcomes"].values())
    if answered != calls or accepted != EXPECTED_ACCEPTED[scenario](calls):
        return False
    if scenario == "noop":
        return True
    rejected_as_creating = result["outcomes"].get("OperationConflict.SnapshotCreating", 0)
    return rejected_as_creating == calls - accepted and (
        scenario == "distinct" or result["most_accepted_on_one_file_system"] == 1
    )


def report(arguments: argparse.Namespace, rounds: list[dict]) -> None:
    def select(scenario: str, field: str) -> list[float]:
        return [r[field] for r in sorted((r for r in rounds if r["scenario"] == scenario), key=lambda r: r["round"])]

    rows = []
    for scenario, label in SCENARIOS.items():
        chosen = [r for r in rounds if r["scenario"] == scenario]
        outcomes: dict[str, int] = {}
        for result in chosen:
            for outcome, count in result["outcomes"].items():
                outcomes[outcome] = outcomes.get(outcome, 0) + count
        rows.append(
            [
                label,
                spread(select(scenario, "last_answer_ms"), 0),
                spread(select(scenario, "p50_ms"), 0),
                spread(select(scenario, "p99_ms"), 0),
                ", ".join(f"{name} {count}" for name, count in sorted(outcomes.items())),
                f"{sum(correct(r, arguments.calls) for r in chosen)} of {len(chosen)}",
            ]
        )
    print_table(
        f"{arguments.calls} concurrent calls per burst: median (min-max) of {arguments.rounds} rounds",
        ["Burst", "Last answer ms", "p50 ms", "p99 ms", "Outcomes, all rounds", "Rounds all answered, accepted as expected"],
        rows,
    )

    baseline = select("distinct", "last_answer_ms")
    noop = select("noop", "last_answer_ms")
    print_table(
        "Time until the last answer, ratios within each round: median (min-max)",
        ["Burst", "/ CreateSnapshot on distinct file systems", "/ no-op"],
        [
            [SCENARIOS[scenario], ratio_summary(select(scenario, "last_answer_ms"), baseline), ratio_summary(select(scenario, "last_answer_ms"), noop)]
            for scenario in ("one", "sixty_four", "distinct")
        ],
    )


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.contention", description=__doc__.splitlines()[0])
    add_common_arguments(parser, rounds=5)
    parser.add_argument("--calls", type=int, default=1000, help="concurrent calls per burst (default %(default)s)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_bounded(main(parse_arguments()), budget=170)
