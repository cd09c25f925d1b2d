"""The retention sweeper: due snapshots deleted exactly once, by the database clock."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging

import asyncpg
import pytest

from nas.v1 import snapshots_pb2
from service.domain import ids
from service.store.database import Database
from tests.drivers import GatedDriver
from tests.support import wait_until
from worker.app import Worker
from worker.sweeper import RetentionSweeper

HOUR = datetime.timedelta(hours=1)


async def insert_snapshots(
    database_url: str, file_system_id: str, expires_at: list[datetime.datetime | None], status: str = "accomplished"
) -> list[str]:
    snapshot_ids = [ids.new_snapshot_id() for _ in expires_at]
    connection = await asyncpg.connect(database_url)
    try:
        await connection.executemany(
            """
            INSERT INTO snapshots (snapshot_id, file_system_id, status, retention_days, expires_at,
                                   source_file_system_size, completed_at)
            VALUES ($1, $2, $3, $4, $5, 100, CASE WHEN $3 = 'progressing' THEN NULL ELSE now() END)
            """,
            [
                (snapshot_id, file_system_id, status, -1 if expiry is None else 1, expiry)
                for snapshot_id, expiry in zip(snapshot_ids, expires_at)
            ],
        )
    finally:
        await connection.close()
    return snapshot_ids


async def deleted_ids(database_url: str, snapshot_ids: list[str]) -> set[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT snapshot_id FROM snapshots WHERE snapshot_id = ANY($1::text[]) AND deleted_at IS NOT NULL",
            snapshot_ids,
        )
    finally:
        await connection.close()
    return {row["snapshot_id"] for row in rows}


async def delete_messages(database_url: str, snapshot_ids: list[str]) -> list[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT payload::text FROM outbox WHERE routing_key = 'snapshot.delete' "
            "AND payload->>'snapshot_id' = ANY($1::text[])",
            snapshot_ids,
        )
    finally:
        await connection.close()
    return [json.loads(row["payload"])["snapshot_id"] for row in rows]


async def database_now(database_url: str) -> datetime.datetime:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval("SELECT now()")
    finally:
        await connection.close()


# Tests pick instants a few days ahead of the database clock, so that a
# sweeper running in another test's worker (which uses the real clock)
# never takes these snapshots.
FUTURE = datetime.timedelta(days=3)


async def test_boundary_instant_is_due(api, database, database_url):
    file_system_id = await api.register()
    now = await database_now(database_url) + FUTURE
    at_now, just_after = await insert_snapshots(
        database_url, file_system_id, [now, now + datetime.timedelta(microseconds=1)]
    )

    swept = await RetentionSweeper(database, interval=60).sweep(now=now)

    assert swept >= 1
    assert await deleted_ids(database_url, [at_now, just_after]) == {at_now}


async def test_keep_forever_never_deleted(api, database, database_url):
    file_system_id = await api.register()
    (forever,) = await insert_snapshots(database_url, file_system_id, [None])
    now = await database_now(database_url) + FUTURE

    await RetentionSweeper(database, interval=60).sweep(now=now)

    assert await deleted_ids(database_url, [forever]) == set()


async def test_overdue_for_hours_all_deleted(api, database, database_url):
    """After a long outage, one run deletes everything overdue, in several batches."""
    file_system_id = await api.register()
    now = await database_now(database_url) + FUTURE
    overdue = await insert_snapshots(database_url, file_system_id, [now - HOUR * hours for hours in range(1, 26)])

    swept = await RetentionSweeper(database, interval=60, batch_size=7).sweep(now=now)

    assert swept >= 25
    assert await deleted_ids(database_url, overdue) == set(overdue)
    assert sorted(await delete_messages(database_url, overdue)) == sorted(overdue)


@pytest.mark.parametrize("status", ["progressing", "failed"])
async def test_every_status_expires(api, database, database_url, status):
    file_system_id = await api.register()
    now = await database_now(database_url) + FUTURE
    (snapshot_id,) = await insert_snapshots(database_url, file_system_id, [now - HOUR], status=status)

    await RetentionSweeper(database, interval=60).sweep(now=now)

    assert await deleted_ids(database_url, [snapshot_id]) == {snapshot_id}


async def test_overdue_age_logged(api, database, database_url, caplog):
    file_system_id = await api.register()
    now = await database_now(database_url) + FUTURE
    await insert_snapshots(database_url, file_system_id, [now - datetime.timedelta(minutes=5)])

    with caplog.at_level(logging.WARNING, logger="worker.sweeper"):
        await RetentionSweeper(database, interval=60).sweep(now=now)

    assert any("waited" in record.getMessage() for record in caplog.records)


async def test_concurrent_sweeps_delete_each_once(api, settings, database, database_url, data_root):
    """Three sweepers with their own pools race over 200 due snapshots; each is deleted once."""
    file_system_id = await api.register()
    now = await database_now(database_url) + FUTURE
    due = await insert_snapshots(database_url, file_system_id, [now - HOUR] * 200)
    pools = [await Database.connect(database_url, pool_size=2, timeout=10) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(RetentionSweeper(pool, interval=60, batch_size=20).sweep(now=now) for pool in pools)
        )
    finally:
        for pool in pools:
            await pool.close()

    assert await deleted_ids(database_url, due) == set(due)
    assert sorted(await delete_messages(database_url, due)) == sorted(due)
    assert sum(result or 0 for result in results) >= 200

    # The workers then make exactly one driver delete per snapshot.
    driver = GatedDriver(data_root)
    worker = Worker(settings, database, driver=driver, run_sweeper=False)
    await worker.start()
    try:
        async def all_deleted() -> bool:
            return set(due) <= set(driver.deleted)

        await wait_until(all_deleted, timeout=60, what="200 driver deletes")
    finally:
        await worker.stop(grace=5)
    assert sorted(snapshot_id for snapshot_id in driver.deleted if snapshot_id in set(due)) == sorted(due)


async def test_sweep_without_lock_picks_nothing_twice(api, database, database_url):
    """Even when runs overlap, SKIP LOCKED and the compare-and-set pick each snapshot once."""
    from service.store import snapshots

    file_system_id = await api.register()
    now = await database_now(database_url) + FUTURE
    due = await insert_snapshots(database_url, file_system_id, [now - HOUR] * 60)
    connections = [await asyncpg.connect(database_url) for _ in range(3)]
    try:

        async def claim(connection: asyncpg.Connection) -> list[tuple[str, str]]:
            picked = []
            while True:
                async with connection.transaction():
                    batch = await snapshots.delete_due(connection, now, 5)
                    await asyncio.sleep(0.01)
                if not batch:
                    return picked
                picked += batch

        picked = await asyncio.gather(*(claim(connection) for connection in connections))
    finally:
        for connection in connections:
            await connection.close()

    mine = [snapshot_id for run in picked for snapshot_id, _ in run if snapshot_id in set(due)]
    assert sorted(mine) == sorted(due)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Shanghai", "America/New_York"])
async def test_expiry_independent_of_time_zone(api, settings, database_url, zone):
    """Whatever the session time zone, expiry is retention_days periods of 24 hours."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1, server_settings={"timezone": zone})
    database = Database(pool, timeout=10)
    try:
        from service.domain.snapshots import admit_snapshot
        from service.domain.validation import validate_create_snapshot

        file_system_id = await api.register()
        params = validate_create_snapshot(file_system_id, "", "", 3, "")
        admission = await admit_snapshot(database, params, 64, "default")
        async with pool.acquire() as connection:
            period = await connection.fetchval(
                "SELECT expires_at - created_at FROM snapshots WHERE snapshot_id = $1", admission.snapshot_id
            )
            # Across a daylight-saving change, 24 hours and one calendar day differ.
            across_change = await connection.fetchval(
                "SELECT ('2026-03-07 12:00:00-05'::timestamptz + make_interval(hours => 24))"
                " - '2026-03-07 12:00:00-05'::timestamptz"
            )
    finally:
        await pool.close()

    assert period == datetime.timedelta(days=3)
    assert across_change == datetime.timedelta(hours=24)


async def test_due_query_uses_expiry_index(api, database_url):
    """The sweep reads only the due rows: an index range scan, not a table scan."""
    file_system_id = await api.register()
    now = await database_now(database_url) + FUTURE
    await insert_snapshots(database_url, file_system_id, [None] * 2000 + [now + HOUR * 24 * 30] * 2000)
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("ANALYZE snapshots")
        plan = await connection.fetchval(
            """
            EXPLAIN (FORMAT JSON)
            SELECT snapshot_id FROM snapshots
            WHERE deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= $1
            ORDER BY expires_at LIMIT 500 FOR UPDATE SKIP LOCKED
            """,
            now,
        )
    finally:
        await connection.close()

    text = json.dumps(json.loads(plan))
    assert "snapshots_expiry" in text
    assert "Seq Scan" not in text


async def test_retention_visible_in_describe(api):
    file_system_id = await api.register()
    response = await api.snapshots.CreateSnapshot(
        snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id, retention_days=1)
    )

    page = await api.snapshots.DescribeSnapshots(
        snapshots_pb2.DescribeSnapshotsRequest(snapshot_ids=[response.snapshot_id])
    )
    snapshot = page.snapshots[0]

    assert snapshot.expire_time.seconds - snapshot.create_time.seconds in (86399, 86400)


async def test_old_client_tokens_purged(api, database, database_url):
    """The sweep removes tokens past their lifetime and keeps recent ones."""
    file_system_id = await api.register()
    old = await api.snapshots.CreateSnapshot(
        snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id, client_token="old-token")
    )
    connection = await asyncpg.connect(database_url)
    try:
        # Finish the first creation, so that the second call is admitted.
        await connection.execute(
            "UPDATE snapshots SET status = 'accomplished', completed_at = now() WHERE snapshot_id = $1",
            old.snapshot_id,
        )
        await connection.execute(
            "UPDATE client_tokens SET created_at = now() - interval '49 hours' WHERE client_token = 'old-token'"
        )
    finally:
        await connection.close()
    recent = await api.snapshots.CreateSnapshot(
        snapshots_pb2.CreateSnapshotRequest(file_system_id=file_system_id, client_token="recent-token")
    )

    await RetentionSweeper(database, interval=60).sweep()

    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT client_token FROM client_tokens WHERE file_system_id = $1", file_system_id
        )
        tokens = {row["client_token"] for row in rows}
    finally:
        await connection.close()
    assert tokens == {"recent-token"}
    assert recent.snapshot_id != old.snapshot_id
