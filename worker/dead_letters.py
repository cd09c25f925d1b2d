"""Replay of dead-lettered messages, for operators once the cause is fixed.

`python -m worker replay-dead-letters` moves messages from the
dead-letter queue back to the work exchange under their original routing
key, which the broker recorded in the `x-death` header. Each message is
acked in the dead-letter queue only after the broker confirmed the
republish. A crash in between therefore leaves a copy in both places,
never in neither, and workers tolerate the duplicate.

A replayed creation of a snapshot that was marked failed changes
nothing, because workers only act on progressing snapshots. Use
AdminService/ResetSnapshot for those.
"""

from __future__ import annotations

import logging

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from worker import topology

__all__ = ["replay_dead_letters"]

logger = logging.getLogger(__name__)


async def replay_dead_letters(amqp_url: str, limit: int | None = None) -> int:
    """Republish up to `limit` dead-lettered messages (all when None); return how many."""
    connection = await aio_pika.connect_robust(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange, _ = await topology.declare(channel)
        queue = await channel.get_queue(topology.DEAD_LETTER_QUEUE)

        replayed = 0
        while limit is None or replayed < limit:
            message = await queue.get(no_ack=False, fail=False, timeout=10)
            if message is None:
                break
            routing_key = _original_routing_key(message)
            if routing_key is None:
                logger.error("Dead letter %s has no x-death routing key; leaving it in place", message.message_id)
                await message.nack(requeue=True)
                break

            await exchange.publish(
                aio_pika.Message(
                    message.body,
                    content_type=message.content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=message.message_id,
                    type=message.type,
                ),
                routing_key=routing_key,
                timeout=10,
            )
            await message.ack()
            replayed += 1
            logger.info("Replayed dead letter %s to %s", message.message_id, routing_key)
    return replayed


def _original_routing_key(message: AbstractIncomingMessage) -> str | None:
    deaths = (message.headers or {}).get("x-death")
    if not isinstance(deaths, list) or not deaths:
        return None
    routing_keys = deaths[0].get("routing-keys") if isinstance(deaths[0], dict) else None
    if isinstance(routing_keys, list) and routing_keys and isinstance(routing_keys[0], str):
        return routing_keys[0]
    return None
