"""SQL for the outbox: messages written with the change they announce.

A message enters the outbox in the transaction that makes the change, so
either both are committed or neither is. The relay publishes due rows to
RabbitMQ and deletes each one once the broker confirmed it. A crash in
between publishes the row again, so consumers must tolerate duplicates.
"""

from __future__ import annotations

import dataclasses
import json

import asyncpg

__all__ = ["NOTIFY_CHANNEL", "OutboxMessage", "claim_due", "delete", "enqueue", "enqueue_many", "reschedule"]

# Channel the relay LISTENs on; a NOTIFY is sent when the transaction commits.
NOTIFY_CHANNEL = "nas_outbox"


@dataclasses.dataclass(frozen=True)
class OutboxMessage:
    id: int
    routing_key: str
    payload: dict[str, object]
    attempts: int


async def enqueue(connection: asyncpg.Connection, routing_key: str, payload: dict[str, object]) -> int:
    message_id = await connection.fetchval(
        "INSERT INTO outbox (routing_key, payload) VALUES ($1, $2::jsonb) RETURNING id",
        routing_key,
        json.dumps(payload),
    )
    await connection.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return message_id


async def enqueue_many(connection: asyncpg.Connection, routing_key: str, payloads: list[dict[str, object]]) -> None:
    """Write several messages with one statement and one notification."""
    if not payloads:
        return
    await connection.execute(
        "INSERT INTO outbox (routing_key, payload) SELECT $1, unnest($2::jsonb[])",
        routing_key,
        [json.dumps(payload) for payload in payloads],
    )
    await connection.execute(f"NOTIFY {NOTIFY_CHANNEL}")


async def claim_due(connection: asyncpg.Connection, limit: int) -> list[OutboxMessage]:
    """Lock up to `limit` due messages, oldest first, skipping rows another relay holds."""
    rows = await connection.fetch(
        """
        SELECT id, routing_key, payload::text AS payload, attempts FROM outbox
        WHERE next_attempt_at <= now()
        ORDER BY next_attempt_at, id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
        """,
        limit,
    )
    return [OutboxMessage(row["id"], row["routing_key"], json.loads(row["payload"]), row["attempts"]) for row in rows]


async def delete(connection: asyncpg.Connection, message_ids: list[int]) -> None:
    await connection.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", message_ids)


async def reschedule(connection: asyncpg.Connection, message_id: int, delay_seconds: float, error: str) -> None:
    await connection.execute(
        """
        UPDATE outbox
        SET attempts = attempts + 1, next_attempt_at = now() + make_interval(secs => $2), last_error = $3
        WHERE id = $1
        """,
        message_id,
        delay_seconds,
        error,
    )
