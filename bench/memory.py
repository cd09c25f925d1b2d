"""Resident memory (RSS) of the API and of a worker process, at rest and under the load of create_throughput.

Usage: .venv/bin/python -m bench.memory [--rounds N] [--duration S]

The API (`python -m service`) and one worker (`python -m worker`, local
driver) run as child processes on this run's database, virtual host and
data root. Next to them run two baselines on the same Python:
`bench._noop_server`, a grpc.aio server with only the health service, and
`bench._amqp_consumer`, a bare aio-pika consumer.

At rest is the median of 10 samples over one second, taken after every
process started and sat idle for 3 seconds, and again 3 seconds after the
last load. Under load, RSS is sampled every 100 ms:

- API and worker: 64 callers send CreateSnapshot for --duration seconds,
  each on an empty file system of its own, so the worker creates the
  snapshots that the API accepts while the load runs;
- baselines: 64 callers send Health/Check to the no-op server for the same
  time while this process publishes relay-sized messages, in batches of
  100 with publisher confirms, to the bare consumer.

Rounds alternate the two loads. The peak is the largest sample of a round.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aio_pika
import asyncpg
import psutil

from bench._common import (
    add_common_arguments,
    insert_file_systems,
    log_directory,
    new_run_id,
    print_machine,
    print_table,
    run_bounded,
    spread,
    start_api,
    start_worker,
    temporary_database,
    temporary_vhost,
    write_json,
)
from bench._grpc_load import LoadClient
from bench.end_to_end import RAW_QUEUE, RELAY_BATCH, ConsumerProcess, relay_message
from service.settings import Settings

MIB = 2**20
CALLERS = 64
# File systems inserted per second of CreateSnapshot load: above what this API admits.
FILE_SYSTEMS_PER_SECOND = 1500


async def rest_rss(processes: dict[str, psutil.Process]) -> dict[str, float]:
    """Return each process's median RSS in MiB over 10 samples, 100 ms apart."""
    samples: dict[str, list[float]] = {name: [] for name in processes}
    for _ in range(10):
        for name, process in processes.items():
            samples[name].append(process.memory_info().rss / MIB)
        await asyncio.sleep(0.1)
    return {name: statistics.median(values) for name, values in samples.items()}


async def peak_rss(processes: dict[str, psutil.Process], load) -> tuple[dict[str, float], object]:
    """Run `load` while sampling RSS every 100 ms; return each process's peak in MiB and the load's result."""
    peaks = {name: process.memory_info().rss / MIB for name, process in processes.items()}
    task = asyncio.ensure_future(load)
    while not task.done():
        for name, process in processes.items():
            peaks[name] = max(peaks[name], process.memory_info().rss / MIB)
        await asyncio.wait([task], timeout=0.1)
    return peaks, task.result()


async def publish_for(exchange, seconds: float) -> int:
    """Publish relay-sized messages in confirmed batches for `seconds`; return how many."""
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.gather(*(exchange.publish(relay_message(sent + i), routing_key=RAW_QUEUE) for i in range(RELAY_BATCH)))
        sent += RELAY_BATCH
    return sent


async def main(arguments: argparse.Namespace) -> None:
    machine = await print_machine()
    run_id = new_run_id()
    data_root = Path(tempfile.mkdtemp(prefix=f"nas-bench-{run_id}-data-"))
    try:
        with temporary_vhost(run_id) as amqp_url:
            async with temporary_database(run_id) as database_url:
                with log_directory(run_id, arguments.keep_logs) as logs:
                    results = await measure(arguments, run_id, database_url, amqp_url, data_root, logs)
    finally:
        shutil.rmtree(data_root, ignore_errors=True)
    report(arguments, results)
    write_json(arguments.json, {"machine": machine, "arguments": vars(arguments), **results})


async def measure(arguments, run_id, database_url, amqp_url, data_root: Path, logs: Path) -> dict:
    count = int(FILE_SYSTEMS_PER_SECOND * arguments.duration * arguments.rounds)
    ids = [f"extreme-bench-{run_id}-{i}" for i in range(count)]
    connection = await asyncpg.connect(database_url)
    try:
        await insert_file_systems(connection, ids)
    finally:
        await connection.close()
    for file_system_id in ids:
        (data_root / "file-systems" / file_system_id).mkdir(parents=True)

    api, address = await start_api(database_url, logs)
    worker = await start_worker(database_url, amqp_url, data_root, logs)
    noop_server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench._noop_server", stdout=asyncio.subprocess.PIPE
    )
    broker = await aio_pika.connect_robust(amqp_url)
    consumer = await ConsumerProcess.start(amqp_url, Settings().worker_concurrency)
    api_client = noop_client = None
    try:
        assert noop_server.stdout is not None
        noop_port = int((await asyncio.wait_for(noop_server.stdout.readline(), 30)).split()[1])
        channel = await broker.channel(publisher_confirms=True)
        exchange = channel.default_exchange
        api_client = await LoadClient.start(address)
        noop_client = await LoadClient.start(f"127.0.0.1:{noop_port}")

        processes = {
            "api": api.process,
            "worker": worker.process,
            "noop_server": psutil.Process(noop_server.pid),
            "consumer": consumer.usage,
        }
        await asyncio.sleep(3)
        at_rest = await rest_rss(processes)

        rounds = []
        next_id = 0
        for index in range(arguments.rounds):
            order = ("subject", "baseline") if index % 2 == 0 else ("baseline", "subject")
            for kind in order:
                if kind == "subject":
                    share = ids[next_id : next_id + int(FILE_SYSTEMS_PER_SECOND * arguments.duration)]
                    next_id += len(share)
                    load = api_client.send(
                        {"op": "load", "method": "create", "concurrency": CALLERS, "duration": arguments.duration, "ids": share}
                    )
                    peaks, result = await peak_rss({"api": processes["api"], "worker": processes["worker"]}, load)
                    done = result["outcomes"].get("OK", 0)
                else:
                    load = asyncio.gather(
                        noop_client.send(
                            {"op": "load", "method": "noop", "concurrency": CALLERS, "duration": arguments.duration}
                        ),
                        publish_for(exchange, arguments.duration),
                    )
                    peaks, (result, published) = await peak_rss(
                        {"noop_server": processes["noop_server"], "consumer": processes["consumer"]}, load
                    )
                    done = result["outcomes"].get("OK", 0)
                rounds.append({"round": index, "kind": kind, "peaks": peaks, "calls": done})
                print(f"round={index} {kind:<8} peaks={ {k: round(v, 1) for k, v in peaks.items()} }", file=sys.stderr)

        await asyncio.sleep(3)
        after_load = await rest_rss(processes)
    finally:
        for client in (api_client, noop_client):
            if client is not None:
                await client.close()
        await consumer.stop()
        await broker.close()
        if noop_server.returncode is None:
            noop_server.terminate()
            await noop_server.wait()
        worker.stop()
        api.stop()
    return {"at_rest": at_rest, "after_load": after_load, "rounds": rounds}


def report(arguments: argparse.Namespace, results: dict) -> None:
    def peaks(name: str) -> list[float]:
        return [r["peaks"][name] for r in sorted(results["rounds"], key=lambda r: r["round"]) if name in r["peaks"]]

    labels = {
        "api": "API (python -m service)",
        "noop_server": "baseline: grpc.aio server with health only",
        "worker": "worker (python -m worker)",
        "consumer": "baseline: bare aio-pika consumer",
    }
    rows = [
        [
            label,
            f"{results['at_rest'][name]:.1f}",
            spread(peaks(name), 1),
            f"{results['after_load'][name]:.1f}",
        ]
        for name, label in labels.items()
    ]
    print_table(
        f"Resident memory in MiB: at rest, peak under load (median (min-max) of {arguments.rounds} rounds of "
        f"{arguments.duration:g} s), and 3 s after the last load",
        ["Process", "At rest MiB", "Peak under load MiB", "After load MiB"],
        rows,
    )
    ratio_rows = []
    for subject, baseline in (("api", "noop_server"), ("worker", "consumer")):
        ratio_rows.append(
            [
                f"{labels[subject]} / {labels[baseline].removeprefix('baseline: ')}",
                f"{results['at_rest'][subject] / results['at_rest'][baseline]:.2f}",
                f"{statistics.median(peaks(subject)) / statistics.median(peaks(baseline)):.2f}",
            ]
        )
    print_table("Ratios to the baselines", ["Pair", "At rest", "Peak under load"], ratio_rows)
    calls = [r["calls"] for r in results["rounds"] if r["kind"] == "subject"]
    print(f"\nCreateSnapshot calls accepted per load round: {', '.join(str(c) for c in calls)}")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    add_common_arguments(parser, rounds=2)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load round (default %(default)s)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_bounded(main(parse_arguments()), budget=170)
