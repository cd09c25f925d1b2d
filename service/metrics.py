"""Prometheus metrics of the API and the worker, served over HTTP when enabled.

Each process exports its own counters, and Prometheus adds them up
across pods. Gauges read from the database and the broker (backlog,
ages, dead letters) are refreshed by each worker every 15 seconds.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

__all__ = [
    "CREATION_SECONDS",
    "DEAD_LETTERED",
    "OLDEST_PROGRESSING_SECONDS",
    "OUTBOX_BACKLOG",
    "REDELIVERIES",
    "RPC_DURATION",
    "RPC_REQUESTS",
    "SNAPSHOTS_CREATED",
    "SNAPSHOTS_DELETED",
    "SNAPSHOTS_FAILED",
    "SNAPSHOTS_IN_FLIGHT",
    "SWEEPER_LAG_SECONDS",
    "serve_metrics",
]

logger = logging.getLogger(__name__)

RPC_REQUESTS = Counter("nas_rpc_requests", "gRPC calls handled, by method and status code.", ["method", "code"])
RPC_DURATION = Histogram(
    "nas_rpc_duration_seconds",
    "Time to handle a gRPC call, by method.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SNAPSHOTS_CREATED = Counter("nas_snapshots_created", "Snapshots that reached accomplished.")
SNAPSHOTS_FAILED = Counter("nas_snapshots_failed", "Snapshots that ended failed.")
SNAPSHOTS_DELETED = Counter(
    "nas_snapshots_deleted", "Snapshots deleted, by reason: user, retention or release.", ["reason"]
)
CREATION_SECONDS = Histogram(
    "nas_snapshot_creation_seconds",
    "Time from CreateSnapshot to accomplished.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400),
)
SNAPSHOTS_IN_FLIGHT = Gauge("nas_snapshots_in_flight", "Snapshot creations this worker is running now.")
OLDEST_PROGRESSING_SECONDS = Gauge(
    "nas_oldest_progressing_seconds", "Age of the oldest snapshot still progressing, 0 when there is none."
)
OUTBOX_BACKLOG = Gauge("nas_outbox_backlog", "Outbox messages not yet confirmed by the broker.")
SWEEPER_LAG_SECONDS = Gauge(
    "nas_sweeper_lag_seconds", "How long the oldest expired snapshot has waited for deletion, 0 when none waits."
)
REDELIVERIES = Counter("nas_message_redeliveries", "Messages the broker delivered again, by routing key.", ["routing_key"])
DEAD_LETTERED = Gauge("nas_dead_lettered_messages", "Messages in the dead-letter queue.")


def serve_metrics(address: str) -> None:
    """Serve /metrics on `address` (HOST:PORT) from a background thread."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"))
    logger.info("Prometheus metrics on http://%s/metrics", address)
