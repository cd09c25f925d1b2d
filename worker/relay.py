"""The outbox relay: publishes committed outbox rows to RabbitMQ.

Each pass locks a batch of due rows with `FOR UPDATE SKIP LOCKED`, so
relays in several worker replicas never publish the same row at once. It
publishes them as persistent messages, waits for the broker's confirms,
and deletes the confirmed rows in the same transaction. A row whose publish failed
stays, with a growing delay before the next try, so a broker outage
delays messages but loses none.

The relay wakes on the NOTIFY that each outbox insert sends at commit,
and polls as well, because a notification is lost while the listening
connection is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random

import aio_pika
import asyncpg
from aio_pika.abc import AbstractExchange

from service.errors import ServiceUnavailable
from service.store import outbox
from service.store.database import UNAVAILABLE_ERRORS, Database

__all__ = ["OutboxRelay"]

logger = logging.getLogger(__name__)

_MAX_RETRY_DELAY = 30.0


class OutboxRelay:
    def __init__(
        self,
        database: Database,
        database_url: str,
        exchange: AbstractExchange,
        *,
        batch_size: int = 100,
        poll_interval: float = 1.0,
        publish_timeout: float = 10.0,
    ) -> None:
        self._database = database
        self._database_url = database_url
        self._exchange = exchange
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._publish_timeout = publish_timeout
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Publish until cancelled."""
        listener = asyncio.create_task(self._listen(), name="outbox-listener")
        try:
            while True:
                self._wake.clear()
                try:
                    published = await self.publish_due()
                except ServiceUnavailable:
                    # Database down: the rows are safe, try again later.
                    published = 0
                if published < self._batch_size:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self._poll_interval)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def publish_due(self) -> int:
        """Publish one batch of due messages; return how many the broker confirmed."""
        async with self._database.transaction() as connection:
            batch = await outbox.claim_due(connection, self._batch_size)
            if not batch:
                return 0

            results = await asyncio.gather(*(self._publish(message) for message in batch), return_exceptions=True)

            confirmed = []
            for message, result in zip(batch, results):
                if isinstance(result, BaseException):
                    delay = min(_MAX_RETRY_DELAY, 2 ** min(message.attempts, 5)) * random.uniform(0.5, 1.0)
                    logger.warning(
                        "Publishing outbox message %d (%s) failed, retrying in %.1f s: %s: %s",
                        message.id,
                        message.routing_key,
                        delay,
                        type(result).__name__,
                        result,
                    )
                    await outbox.reschedule(connection, message.id, delay, f"{type(result).__name__}: {result}")
                else:
                    confirmed.append(message.id)

            await outbox.delete(connection, confirmed)

        if confirmed:
            logger.debug("Published %d outbox messages", len(confirmed))
        return len(confirmed)

    async def _publish(self, message: outbox.OutboxMessage) -> None:
        body = aio_pika.Message(
            json.dumps(message.payload).encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=f"outbox-{message.id}",
            type=message.routing_key,
        )
        await self._exchange.publish(body, routing_key=message.routing_key, timeout=self._publish_timeout)

    async def _listen(self) -> None:
        """Keep a LISTEN connection open and wake the relay on each NOTIFY."""
        while True:
            try:
                connection = await asyncpg.connect(self._database_url, timeout=self._publish_timeout)
            except UNAVAILABLE_ERRORS as exc:
                logger.debug("Outbox listener cannot connect, polling only: %s", exc)
                await asyncio.sleep(self._poll_interval * 5)
                continue

            lost = asyncio.Event()
            connection.add_termination_listener(lambda _connection: lost.set())
            try:
                await connection.add_listener(outbox.NOTIFY_CHANNEL, lambda *_args: self._wake.set())
                # Rows committed before LISTEN took effect are found by this poll.
                self._wake.set()
                await lost.wait()
                logger.warning("Outbox listener connection was lost; reconnecting")
            except UNAVAILABLE_ERRORS as exc:
                logger.warning("Outbox listener failed, reconnecting: %s", exc)
            finally:
                connection.terminate()
