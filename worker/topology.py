"""RabbitMQ names and declarations: one exchange, one queue per kind of work.

Queues are durable quorum queues, which the broker replicates and stores
on disk. Because messages are persistent and publishes confirmed, a
message the relay saw confirmed survives a broker restart.
"""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from service import messages

__all__ = ["EXCHANGE", "declare", "queue_name"]

EXCHANGE = "nas.work"


def queue_name(routing_key: str) -> str:
    return f"nas.{routing_key}"


async def declare(channel: AbstractChannel) -> tuple[AbstractExchange, dict[str, AbstractQueue]]:
    """Declare the exchange and every work queue, bound by routing key."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    queues = {}
    for routing_key in messages.ROUTING_KEYS:
        queue = await channel.declare_queue(
            queue_name(routing_key), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, routing_key)
        queues[routing_key] = queue
    return exchange, queues
