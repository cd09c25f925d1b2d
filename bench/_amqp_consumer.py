"""A bare aio-pika consumer process, the baseline for the worker: `python -m bench._amqp_consumer URL QUEUE PREFETCH`.

It declares QUEUE as a durable quorum queue, consumes with manual acks and
PREFETCH unacknowledged messages at most, as the worker does, and does no
other work. After each ack it writes the wall-clock time at which the
message arrived (time.time(), seconds) as one line on stdout, so the parent
can count acks and measure latency. It writes "ready" once it consumes, and
exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
import time

import aio_pika
from aio_pika.abc import AbstractIncomingMessage


async def consume(url: str, queue_name: str, prefetch: int) -> None:
    connection = await aio_pika.connect_robust(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})

        async def on_message(message: AbstractIncomingMessage) -> None:
            received = time.time()
            await message.ack()
            sys.stdout.write(f"{received:.6f}\n")
            sys.stdout.flush()

        await queue.consume(on_message)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await connection.close()


if __name__ == "__main__":
    asyncio.run(consume(sys.argv[1], sys.argv[2], int(sys.argv[3])))
