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
import random
import socket
import uuid
from collections.abc import Awaitable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from service import messages, metrics
from service.domain import ids
from service.errors import ServiceUnavailable
from service.settings import Settings
from service.store.database import Database
from worker import topology
from worker.drivers import create_driver
from worker.drivers.base import StorageDriver
from service.health import HealthReporter
from service.runtime import STARTUP_RETRY_DELAY, startup_attempts
from worker.gauges import refresh_gauges
from worker.reaper import Reaper
from worker.reconciler import Reconciler
from worker.relay import OutboxRelay
from worker.sweeper import RetentionSweeper
from worker.tasks import Outcome, SnapshotTasks

__all__ = ["Worker"]

logger = logging.getLogger(__name__)

# Maximum wait, in seconds, before a failed message goes back to its queue.
_MAX_RETRY_DELAY = 30.0
# Seconds an ack, nack or reject may take before the worker stops waiting.
_SETTLE_TIMEOUT = 10.0


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
        self._tasks = SnapshotTasks(
            database,
            driver or create_driver(settings),
            self.owner,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )
        self._connection: AbstractRobustConnection | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._health = HealthReporter(self._ready, process="Worker")

    async def start(self) -> None:
        # Connect; a broker that is down at start is waited for, with a log line per try.
        self._connection = await _connect(self._settings.amqp_url, self.owner, startup_attempts(self._settings))

        # One channel publishes with confirms and raises on unroutable messages.
        publish_channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange, _ = await topology.declare(publish_channel)
        if self._run_relay:
            relay = OutboxRelay(self._database, self._settings.database_url, exchange)
            self._background.append(asyncio.create_task(relay.run(), name="outbox-relay"))
        if self._run_sweeper:
            sweeper = RetentionSweeper(self._database, interval=self._settings.sweep_interval)
            self._background.append(asyncio.create_task(sweeper.run(), name="retention-sweeper"))
            reaper = Reaper(
                self._database,
                interval=max(1.0, self._settings.lease_seconds / 3),
                max_attempts=self._settings.max_attempts,
                max_creation_seconds=self._settings.max_creation_seconds,
            )
            self._background.append(asyncio.create_task(reaper.run(), name="reaper"))
            reconciler = Reconciler(self._database, self._tasks.driver)
            self._background.append(asyncio.create_task(reconciler.run(), name="reconciler"))

        self._background.append(
            asyncio.create_task(refresh_gauges(self._database, publish_channel), name="gauges")
        )

        # Another consumes; prefetch bounds the creations this process runs at once.
        consume_channel = await self._connection.channel()
        await consume_channel.set_qos(prefetch_count=self._settings.worker_concurrency)
        _, queues = await topology.declare(consume_channel)
        for routing_key, queue in queues.items():
            tag = await queue.consume(self._on_message)
            self._consumers.append((queue, tag))
            logger.info("Consuming %s", queue.name)

        await self._health.start(self._settings.health_address)
        logger.info("Worker %s started with driver %s", self.owner, self._settings.driver)

    async def stop(self, grace: float) -> None:
        await self._health.stop()

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

    async def _ready(self) -> bool:
        """Tell whether PostgreSQL responds and the broker connection is open."""
        connection_open = self._connection is not None and not self._connection.is_closed
        return connection_open and await self._database.ping()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            await self._handle(message)
        finally:
            self._in_flight.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        routing_key = message.routing_key or ""
        attempt = _delivery_attempt(message)
        if message.redelivered:
            metrics.REDELIVERIES.labels(routing_key).inc()

        # A message this worker cannot read will never succeed: dead-letter it.
        try:
            payload = _parse(routing_key, message.body)
        except ValueError as exc:
            logger.error("Dead-lettering unreadable message %s on %s: %s", message.message_id, routing_key, exc)
            await _settle(message.reject(requeue=False))
            return

        try:
            outcome = await self._tasks.handle(routing_key, payload)
        except asyncio.CancelledError:
            # Shutdown: the broker redelivers the message to another worker.
            await _settle(message.nack(requeue=True))
            raise
        except Exception as exc:
            logger.exception("Unexpected error handling message %s on %s", message.message_id, routing_key)
            outcome = Outcome(retry=True, reason=f"internal error: {type(exc).__name__}")

        if not outcome.retry:
            await _settle(message.ack())
            return

        # Out of attempts: record the failure, then dead-letter the message.
        if outcome.counts_as_attempt and attempt >= self._settings.max_attempts:
            try:
                await self._tasks.give_up(routing_key, payload, outcome.reason, attempt)
            except ServiceUnavailable:
                logger.warning("Cannot record the final failure while the database is unavailable; requeueing")
                await asyncio.sleep(_backoff(attempt))
                await _settle(message.nack(requeue=True))
                return
            logger.error("Dead-lettering message %s on %s after %d attempts", message.message_id, routing_key, attempt)
            await _settle(message.reject(requeue=False))
            return

        delay = _backoff(attempt)
        logger.info(
            "Retrying message %s on %s in %.1f s (attempt %d of %d): %s",
            message.message_id,
            routing_key,
            delay,
            attempt,
            self._settings.max_attempts,
            outcome.reason,
        )
        # NOTE: the message keeps its prefetch slot while it waits.
        await asyncio.sleep(delay)
        await _settle(message.nack(requeue=True))


def _parse(routing_key: str, body: bytes) -> dict[str, str]:
    """Return the message's ids, or raise ValueError for a message no worker can handle."""
    required = _REQUIRED_FIELDS.get(routing_key)
    if required is None:
        raise ValueError(f"unknown routing key {routing_key!r}")
    payload = json.loads(body)
    if not isinstance(payload, dict):
        raise ValueError("the body is not a JSON object")
    for field, check in required.items():
        value = payload.get(field)
        if not isinstance(value, str) or not check(value):
            raise ValueError(f"{field} is missing or invalid: {value!r}")
    return {field: payload[field] for field in required}


_REQUIRED_FIELDS = {
    messages.CREATE_SNAPSHOT: {"snapshot_id": ids.is_snapshot_id, "file_system_id": ids.is_file_system_id},
    messages.DELETE_SNAPSHOT: {"snapshot_id": ids.is_snapshot_id, "file_system_id": ids.is_file_system_id},
    messages.PROVISION_FILE_SYSTEM: {"file_system_id": ids.is_file_system_id},
    messages.RELEASE_FILE_SYSTEM: {"file_system_id": ids.is_file_system_id},
}


def _delivery_attempt(message: AbstractIncomingMessage) -> int:
    """Return which delivery of the message this is, from 1; quorum queues count earlier ones."""
    earlier = (message.headers or {}).get("x-delivery-count", 0)
    return (earlier if isinstance(earlier, int) else 0) + 1


def _backoff(attempt: int) -> float:
    """Return the seconds before a retry: doubling from 1 s, at most 30 s, with jitter."""
    return min(_MAX_RETRY_DELAY, 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


async def _settle(acknowledgement: Awaitable[object]) -> None:
    """Send an ack, nack or reject, tolerating a channel that closed meanwhile.

    After a reconnect the broker has already requeued the message, and it
    comes back to a worker, whose handlers are idempotent.
    """
    try:
        await asyncio.wait_for(acknowledgement, _SETTLE_TIMEOUT)
    except (aio_pika.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError, TimeoutError, RuntimeError) as exc:
        logger.warning("Could not settle a message; the broker will redeliver it: %s", exc)


async def _connect(url: str, name: str, attempts: int) -> AbstractRobustConnection:
    for attempt in range(1, attempts + 1):
        try:
            return await aio_pika.connect_robust(url, client_properties={"connection_name": name}, timeout=10)
        except (OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
            if attempt == attempts:
                raise
            logger.warning("RabbitMQ is not reachable (attempt %d of %d): %s", attempt, attempts, exc)
            await asyncio.sleep(STARTUP_RETRY_DELAY)
    raise AssertionError("the loop returns or raises")


