"""RabbitMQ names and declarations: one exchange, one queue per kind of work, one dead-letter queue.

Queues are durable quorum queues, which the broker replicates and stores
on disk. Because messages are persistent and publishes confirmed, a
message the relay saw confirmed survives a broker restart.

A message that failed for good (unreadable, or out of attempts) is
rejected by the worker and lands in the dead-letter queue, where an
operator can inspect it and replay it (`python -m worker replay-dead-letters`).
The broker's own delivery limit dead-letters a message that made the
worker crash over and over, so it never reached the worker's decision.
"""

from __future__ import annotations

import logging

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from service import messages

__all__ = ["DEAD_LETTER_EXCHANGE", "DEAD_LETTER_QUEUE", "EXCHANGE", "declare", "queue_name"]

logger = logging.getLogger(__name__)

EXCHANGE = "nas.work"
DEAD_LETTER_EXCHANGE = "nas.dead-letter"
DEAD_LETTER_QUEUE = "nas.dead-letter"

# Deliveries after which the broker dead-letters a message by itself. It is
# far above the worker's own limit, which normally decides first.
BROKER_DELIVERY_LIMIT = 50


def queue_name(routing_key: str) -> str:
    return f"nas.{routing_key}"


def work_queue_arguments() -> dict[str, object]:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-delivery-limit": BROKER_DELIVERY_LIMIT,
    }


async def declare(channel: AbstractChannel) -> tuple[AbstractExchange, dict[str, AbstractQueue]]:
    """Declare the exchanges, every work queue bound by routing key, and the dead-letter queue."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)

    dead_letters = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    dead_letter_queue = await _declare_queue(channel, DEAD_LETTER_QUEUE, {"x-queue-type": "quorum"})
    await dead_letter_queue.bind(dead_letters)

    queues = {}
    for routing_key in messages.ROUTING_KEYS:
        queue = await _declare_queue(channel, queue_name(routing_key), work_queue_arguments())
        await queue.bind(exchange, routing_key)
        queues[routing_key] = queue
    return exchange, queues


async def _declare_queue(channel: AbstractChannel, name: str, arguments: dict[str, object]) -> AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except aio_pika.exceptions.ChannelPreconditionFailed:
        # The broker keeps a queue's arguments for its lifetime, so a queue
        # declared by an older version cannot be changed in place.
        logger.error(
            "Queue %s exists with other arguments than %s. Drain it, then delete it "
            "(rabbitmqctl delete_queue %s) so that the worker can declare it again.",
            name,
            arguments,
            name,
        )
        raise
