"""Time from CreateSnapshot to `accomplished`, and worker throughput, against bare aio-pika.

Usage: .venv/bin/python -m bench.end_to_end [--rounds N] [--samples N] [--snapshots N]

The API (`python -m service`) and the workers (`python -m worker`, local
driver, default settings) run as child processes on this run's database,
virtual host and data root. File systems are inserted into the database and
their empty directories made under the data root before the workers start,
as a worker's provisioning would.

Latency. One snapshot at a time of an empty file system: the time from
CreateSnapshot returning to the snapshot's `completed_at`. The worker sets
`completed_at` by the database clock, which is this host's clock, at the
start of the transaction that marks the snapshot accomplished. So the time
leaves out that transaction's own work. The time at which polling the row every 2 ms first
finds it accomplished is reported too, as an upper bound. The baseline is a bare aio-pika
round trip on the same broker: the time from the start of a publish
(persistent, with publisher confirms) to a `bench._amqp_consumer` process
receiving the message from a quorum queue with manual ack. Samples of the
two alternate one by one.

Throughput. With 1 and then 4 worker processes running, N CreateSnapshot
calls (64 at a time) on N file systems; throughput is N over the time from
the first call to the last `completed_at`. The baseline publishes N messages
of the same size as the relay's (persistent, confirmed, in batches of 100
as the relay does) to a quorum queue consumed with manual ack by as many
`bench._amqp_consumer` processes, each with the worker's prefetch; it is N
over the time from the first publish to the last arrival.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import asyncpg
import grpc
import psutil

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
    start_worker,
    temporary_database,
    temporary_vhost,
    total_cpu_seconds,
    write_json,
)
from nas.v1 import snapshots_pb2, snapshots_pb2_grpc
from service.settings import Settings

WORKER_COUNTS = (1, 4)
RAW_QUEUE = "bench.raw"
# Messages the relay publishes at once (OutboxRelay's default batch size).
RELAY_BATCH = 100
# Seconds to wait for snapshots to finish before a round is declared failed.
COMPLETION_TIMEOUT = 60.0


class ConsumerProcess:
    """A `bench._amqp_consumer` child process and the arrival times it reports."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        # For CPU accounting.
        self.usage = psutil.Process(process.pid)
        self.arrivals: asyncio.Queue[float] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, amqp_url: str, prefetch: int) -> ConsumerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench._amqp_consumer",
            amqp_url,
            RAW_QUEUE,
            str(prefetch),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        consumer = cls(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"the aio-pika consumer did not start: {line!r}")
        consumer._reader = asyncio.create_task(consumer._read())
        return consumer

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.arrivals.put_nowait(float(line))

    async def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader


@contextlib.asynccontextmanager
async def consumers(amqp_url: str, count: int, prefetch: int) -> AsyncIterator[list[ConsumerProcess]]:
    started = await asyncio.gather(*(ConsumerProcess.start(amqp_url, prefetch) for _ in range(count)))
    try:
        yield list(started)
    finally:
        await asyncio.gather(*(consumer.stop() for consumer in started))


def relay_message(index: int) -> aio_pika.Message:
    """Return a message with the body and properties that the relay publishes for a creation."""
    body = json.dumps({"snapshot_id": f"s-extreme-{index:017d}", "file_system_id": f"extreme-bench-{index:010d}"})
    return aio_pika.Message(
        body.encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=f"outbox-{index}",
        type="snapshot.create",
    )


class Run:
    """The servers and connections of one run."""

    def __init__(self, arguments, database_url, amqp_url, data_root: Path, logs: Path, monitor, run_id: str) -> None:
        self.arguments = arguments
        self.database_url = database_url
        self.amqp_url = amqp_url
        self.data_root = data_root
        self.logs = logs
        self.monitor = monitor
        self.run_id = run_id
        self.next_file_system = 0
        self.worker_count = 0

    async def new_file_systems(self, count: int) -> list[str]:
        """Insert file systems with empty directories under the data root."""
        ids = [f"extreme-bench-{self.run_id}-{self.next_file_system + i}" for i in range(count)]
        self.next_file_system += count
        await insert_file_systems(self.monitor, ids)
        for file_system_id in ids:
            (self.data_root / "file-systems" / file_system_id).mkdir(parents=True)
        return ids

    async def start_workers(self, count: int) -> list:
        names = [f"worker-{self.worker_count + i}" for i in range(count)]
        self.worker_count += count
        return list(
            await asyncio.gather(
                *(start_worker(self.database_url, self.amqp_url, self.data_root, self.logs, name) for name in names)
            )
        )

    async def wait_accomplished(self, snapshot_ids: list[str], poll: float) -> list[float]:
        """Wait until every snapshot is accomplished; return their completion times (Unix seconds)."""
        deadline = time.monotonic() + COMPLETION_TIMEOUT
        while True:
            rows = await self.monitor.fetch(
                "SELECT status, extract(epoch FROM completed_at)::float8 AS completed "
                "FROM snapshots WHERE snapshot_id = ANY($1::text[])",
                snapshot_ids,
            )
            failed = [row for row in rows if row["status"] == "failed"]
            if failed:
                raise RuntimeError(f"{len(failed)} snapshots failed; see the worker logs")
            done = [row["completed"] for row in rows if row["status"] == "accomplished"]
            if len(done) == len(snapshot_ids):
                return done
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(done)} of {len(snapshot_ids)} snapshots accomplished in {COMPLETION_TIMEOUT} s")
            await asyncio.sleep(poll)


async def measure_latency(
    run: Run, stub, exchange, consumer: ConsumerProcess, rounds: int, samples_per_round: int
) -> list[dict]:
    """Alternate single end-to-end snapshots and single bare publish-to-consume round trips."""
    samples = []
    file_systems = await run.new_file_systems(rounds * samples_per_round)
    index = 0
    for round_index in range(rounds):
        for _ in range(samples_per_round):
            response = await stub.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_systems[index]))
            returned = time.time()
            [completed] = await run.wait_accomplished([response.snapshot_id], poll=0.002)
            observed = time.time()
            samples.append(
                {
                    "kind": "end_to_end",
                    "round": round_index,
                    "ms": 1000 * (completed - returned),
                    "observed_ms": 1000 * (observed - returned),
                }
            )

            published = time.time()
            await exchange.publish(relay_message(index), routing_key=RAW_QUEUE)
            arrived = await asyncio.wait_for(consumer.arrivals.get(), 30)
            samples.append({"kind": "raw", "round": round_index, "ms": 1000 * (arrived - published)})
            index += 1
    return samples


async def worker_round(run: Run, stub, workers: int) -> dict:
    file_systems = await run.new_file_systems(run.arguments.snapshots)
    processes = await run.start_workers(workers)
    try:
        cpu_before = total_cpu_seconds([p.process for p in processes])
        semaphore = asyncio.Semaphore(64)

        async def create(file_system_id: str) -> str:
            async with semaphore:
                response = await stub.CreateSnapshot(snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id))
                return response.snapshot_id

        started = time.time()
        snapshot_ids = await asyncio.gather(*(create(file_system_id) for file_system_id in file_systems))
        submitted = time.time()
        completed = await run.wait_accomplished(list(snapshot_ids), poll=0.05)
        cpu = total_cpu_seconds([p.process for p in processes]) - cpu_before
    finally:
        for process in processes:
            process.stop()
    finished = max(completed)
    return {
        "kind": "workers",
        "workers": workers,
        "throughput": len(file_systems) / (finished - started),
        "submit_seconds": submitted - started,
        "seconds": finished - started,
        "worker_cpu_ms_per_snapshot": 1000 * cpu / len(file_systems),
    }


async def raw_round(run: Run, exchange, consumer_count: int, prefetch: int, first_index: int) -> dict:
    count = run.arguments.snapshots
    async with consumers(run.amqp_url, consumer_count, prefetch) as started:
        cpu_before = total_cpu_seconds([c.usage for c in started])
        published = time.time()
        for batch_start in range(0, count, RELAY_BATCH):
            batch = range(first_index + batch_start, first_index + min(count, batch_start + RELAY_BATCH))
            await asyncio.gather(*(exchange.publish(relay_message(i), routing_key=RAW_QUEUE) for i in batch))
        arrivals = []
        while len(arrivals) < count:
            waiting = [asyncio.ensure_future(c.arrivals.get()) for c in started]
            done, pending = await asyncio.wait(waiting, timeout=COMPLETION_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if not done:
                raise TimeoutError(f"{len(arrivals)} of {count} messages arrived in {COMPLETION_TIMEOUT} s")
            arrivals.extend(task.result() for task in done)
            # Drain what else has arrived, without waiting.
            for consumer in started:
                while not consumer.arrivals.empty():
                    arrivals.append(consumer.arrivals.get_nowait())
        cpu = total_cpu_seconds([c.usage for c in started]) - cpu_before
    return {
        "kind": "raw",
        "workers": consumer_count,
        "throughput": count / (max(arrivals) - published),
        "seconds": max(arrivals) - published,
        "worker_cpu_ms_per_snapshot": 1000 * cpu / count,
    }


async def main(arguments: argparse.Namespace) -> None:
    machine = await print_machine()
    run_id = new_run_id()
    concurrency = Settings().worker_concurrency
    data_root = Path(tempfile.mkdtemp(prefix=f"nas-bench-{run_id}-data-"))
    try:
        with temporary_vhost(run_id) as amqp_url:
            async with temporary_database(run_id) as database_url:
                with log_directory(run_id, arguments.keep_logs) as logs:
                    results = await run_all(arguments, run_id, database_url, amqp_url, data_root, logs, concurrency)
    finally:
        shutil.rmtree(data_root, ignore_errors=True)

    report(arguments, results, concurrency)
    write_json(arguments.json, {"machine": machine, "arguments": vars(arguments), **results})


async def run_all(arguments, run_id, database_url, amqp_url, data_root, logs, concurrency) -> dict:
    monitor = await asyncpg.connect(database_url)
    broker = await aio_pika.connect_robust(amqp_url)
    api, address = await start_api(database_url, logs)
    try:
        channel = await broker.channel(publisher_confirms=True)
        await channel.declare_queue(RAW_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        exchange = channel.default_exchange
        run = Run(arguments, database_url, amqp_url, data_root, logs, monitor, run_id)

        async with grpc.aio.insecure_channel(address) as grpc_channel:
            stub = snapshots_pb2_grpc.SnapshotServiceStub(grpc_channel)

            # Latency, with one worker and one bare consumer.
            [worker] = await run.start_workers(1)
            try:
                async with consumers(amqp_url, 1, concurrency) as [consumer]:
                    # Warm-up samples, not reported.
                    await measure_latency(run, stub, exchange, consumer, 1, 10)
                    latency = await measure_latency(run, stub, exchange, consumer, arguments.rounds, arguments.samples)
            finally:
                worker.stop()

            throughput = []
            published = 0
            for index in range(arguments.rounds):
                for workers in WORKER_COUNTS:
                    kinds = ("raw", "workers") if index % 2 == 0 else ("workers", "raw")
                    for kind in kinds:
                        if kind == "raw":
                            result = await raw_round(run, exchange, workers, concurrency, published)
                            published += arguments.snapshots
                        else:
                            result = await worker_round(run, stub, workers)
                        result["round"] = index
                        throughput.append(result)
                        print(
                            f"round={index} {kind:<7} processes={workers} {result['throughput']:7.1f}/s",
                            file=sys.stderr,
                        )
    finally:
        api.stop()
        await broker.close()
        await monitor.close()
    return {"latency": latency, "throughput": throughput}


def report(arguments: argparse.Namespace, results: dict, concurrency: int) -> None:
    latency = results["latency"]

    def latencies(kind: str, round_index: int | None = None) -> list[float]:
        return [s["ms"] for s in latency if s["kind"] == kind and (round_index is None or s["round"] == round_index)]

    per_round_p50 = {
        kind: [percentile(latencies(kind, r), 0.5) for r in range(arguments.rounds)] for kind in ("end_to_end", "raw")
    }
    rows = []
    for kind, label in (("end_to_end", "CreateSnapshot returned to accomplished"), ("raw", "bare aio-pika publish to consume")):
        values = latencies(kind)
        rows.append(
            [
                label,
                len(values),
                f"{percentile(values, 0.5):.1f}",
                f"{percentile(values, 0.99):.1f}",
                f"{max(values):.1f}",
                spread(per_round_p50[kind], 1),
            ]
        )
    print_table(
        f"Latency of one snapshot of an empty file system, 1 worker process: {arguments.rounds} rounds of "
        f"{arguments.samples} samples each, alternating with the baseline",
        ["Path", "Samples", "p50 ms", "p99 ms", "Max ms", "Per-round p50 ms, median (min-max)"],
        rows,
    )
    ratio = ratio_summary(per_round_p50["end_to_end"], per_round_p50["raw"])
    observed = [s["observed_ms"] for s in latency if s["kind"] == "end_to_end"]
    print(f"\nEnd-to-end p50 / bare aio-pika p50, per round: {ratio}")
    print(
        f"Seen by polling the database every 2 ms (an upper bound): p50 {percentile(observed, 0.5):.1f} ms, "
        f"p99 {percentile(observed, 0.99):.1f} ms"
    )

    throughput = results["throughput"]

    def select(kind: str, workers: int, field: str = "throughput") -> list[float]:
        chosen = [r for r in throughput if r["kind"] == kind and r["workers"] == workers]
        return [r[field] for r in sorted(chosen, key=lambda r: r["round"])]

    rows = []
    for workers in WORKER_COUNTS:
        rows.append(
            [
                workers,
                spread(select("workers", workers), 1),
                spread(select("raw", workers), 1),
                ratio_summary(select("workers", workers), select("raw", workers)),
                spread(select("workers", workers, "worker_cpu_ms_per_snapshot")),
                spread(select("raw", workers, "worker_cpu_ms_per_snapshot")),
            ]
        )
    print_table(
        f"Throughput, {arguments.snapshots} snapshots or messages per round, prefetch {concurrency} per process: "
        f"median (min-max) of {arguments.rounds} rounds",
        [
            "Processes",
            "Workers, snapshots/s",
            "Bare aio-pika, messages/s",
            "Workers / aio-pika",
            "Worker CPU ms per snapshot",
            "Consumer CPU ms per message",
        ],
        rows,
    )

    p50 = percentile(latencies("end_to_end"), 0.5)
    print_table(
        "Goal (reported, not asserted)",
        ["Goal", "Measured", "Met"],
        [["End-to-end p50 under 50 ms", f"{p50:.1f} ms", "yes" if p50 < 50 else "no"]],
    )
    throughput_4 = statistics.median(select("workers", 4)) / statistics.median(select("workers", 1))
    print(f"\n4 workers / 1 worker, medians: {throughput_4:.2f}")


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.end_to_end", description=__doc__.splitlines()[0])
    add_common_arguments(parser, rounds=3)
    parser.add_argument("--samples", type=int, default=50, help="latency samples per round (default %(default)s)")
    parser.add_argument(
        "--snapshots", type=int, default=300, help="snapshots or messages per throughput round (default %(default)s)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_bounded(main(parse_arguments()), budget=170)
