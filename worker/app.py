"""The worker process: consumes work messages, runs the outbox relay and the retention sweeper.

Start connects to RabbitMQ, declares the topology, starts the relay, the
sweeper and the consumers. Stop cancels the consumers first, so no new message
arrives, waits for the messages in hand within a grace period, requeues
what is left by closing the channel, and stops the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from service import messages
from service.settings import Settings
from service.store.database import Database
from worker import topology
from worker.drivers import create_driver
from worker.drivers.base import StorageDriver
from worker.relay import OutboxRelay
from worker.sweeper import RetentionSweeper
from worker.tasks import Outcome, SnapshotTasks

__all__ = ["Worker"]

logger = logging.getLogger(__name__)

# Seconds before a message that could not be handled now goes back to its queue.
_RETRY_DELAY = 2.0
_CONNECT_ATTEMPTS = 30
_CONNECT_DELAY = 2.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        database: Database,
        *,
        driver: StorageDriver | None = None,
        run_relay: bool = True,
        run_sweeper: bool = True,
    ) -> None:
        self._settings = settings
        self._database = database
        self._run_relay = run_relay
        self._run_sweeper = run_sweeper
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._tasks = SnapshotTasks(database, driver or create_driver(settings), self.owner)
        self._connection: AbstractRobustConnection | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        # Connect; a broker that is down at start is waited for, with a log line per try.
        self._connection = await _connect(self._settings.amqp_url, self.owner)

        # One channel publishes with confirms and raises on unroutable messages.
        publish_channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange, _ = await topology.declare(publish_channel)
        if self._run_relay:
            relay = OutboxRelay(self._database, self._settings.database_url, exchange)
            self._background.append(asyncio.create_task(relay.run(), name="outbox-relay"))
        if self._run_sweeper:
            sweeper = RetentionSweeper(self._database, interval=self._settings.sweep_interval)
            self._background.append(asyncio.create_task(sweeper.run(), name="retention-sweeper"))

        # Another consumes; prefetch bounds the creations this process runs at once.
        consume_channel = await self._connection.channel()
        await consume_channel.set_qos(prefetch_count=self._settings.worker_concurrency)
        _, queues = await topology.declare(consume_channel)
        for routing_key, queue in queues.items():
            tag = await queue.consume(self._on_message)
            self._consumers.append((queue, tag))
            logger.info("Consuming %s", queue.name)

        logger.info("Worker %s started with driver %s", self.owner, self._settings.driver)

    async def stop(self, grace: float) -> None:
        # Stop deliveries first, so the drain below has an end.
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag, timeout=5)
        self._consumers.clear()

        # Let messages in hand finish; whatever is not acked by then is
        # requeued by the broker when the connection closes.
        if self._in_flight:
            logger.info("Waiting up to %.0f s for %d messages in progress", grace, len(self._in_flight))
            _, pending = await asyncio.wait(self._in_flight, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                logger.warning("Handed back %d unfinished messages to the broker", len(pending))

        # The relay and the sweeper commit each batch atomically, so
        # cancelling them between batches loses nothing.
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()

        if self._connection is not None:
            await self._connection.close()
        logger.info("Worker %s stopped", self.owner)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            await self._handle(message)
        finally:
            self._in_flight.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            payload = json.loads(message.body)
            outcome = await self._dispatch(message.routing_key or "", payload)
        except (ValueError, KeyError, TypeError) as exc:
            # A message this worker cannot read will never succeed: drop it.
            logger.error("Rejecting unreadable message %s on %s: %s", message.message_id, message.routing_key, exc)
            await message.reject(requeue=False)
            return
        except asyncio.CancelledError:
            # Shutdown: the broker redelivers the message to another worker.
            await _nack_quietly(message)
            raise
        except Exception:
            logger.exception("Unexpected error handling message %s; it will be retried", message.message_id)
            outcome = Outcome.RETRY

        if outcome is Outcome.DONE:
            await message.ack()
        else:
            await asyncio.sleep(_RETRY_DELAY)
            await message.nack(requeue=True)

    async def _dispatch(self, routing_key: str, payload: dict[str, str]) -> Outcome:
        if routing_key == messages.CREATE_SNAPSHOT:
            return await self._tasks.create_snapshot(payload["snapshot_id"], payload["file_system_id"])
        if routing_key == messages.DELETE_SNAPSHOT:
            return await self._tasks.delete_snapshot(payload["snapshot_id"], payload["file_system_id"])
        if routing_key == messages.PROVISION_FILE_SYSTEM:
            return await self._tasks.provision_file_system(payload["file_system_id"])
        if routing_key == messages.RELEASE_FILE_SYSTEM:
            return await self._tasks.release_file_system(payload["file_system_id"])
        raise KeyError(f"unknown routing key {routing_key!r}")


async def _connect(url: str, name: str) -> AbstractRobustConnection:
    for attempt in range(1, _CONNECT_ATTEMPTS + 1):
        try:
            return await aio_pika.connect_robust(url, client_properties={"connection_name": name}, timeout=10)
        except (OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
            if attempt == _CONNECT_ATTEMPTS:
                raise
            logger.warning("RabbitMQ is not reachable (attempt %d of %d): %s", attempt, _CONNECT_ATTEMPTS, exc)
            await asyncio.sleep(_CONNECT_DELAY)
    raise AssertionError("the loop returns or raises")


async def _nack_quietly(message: AbstractIncomingMessage) -> None:
    with contextlib.suppress(Exception):
        await message.nack(requeue=True)
