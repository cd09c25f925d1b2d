"""DescribeSnapshots: filters, paging, order and bad values."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from nas.v1 import snapshots_pb2
from service.domain import ids
from tests.support import error_details


def describe(**fields: object) -> snapshots_pb2.DescribeSnapshotsRequest:
    return snapshots_pb2.DescribeSnapshotsRequest(**fields)


@pytest.fixture
async def five_snapshots(api, database_url):
    """A file system with five snapshots a second apart, oldest first, and their ids."""
    file_system_id = await api.register()
    snapshot_ids = [ids.new_snapshot_id() for _ in range(5)]
    statuses = ["accomplished", "failed", "accomplished", "accomplished", "progressing"]
    names = ["Alpha", "Beta", "Alpha", "Gamma", "Delta"]
    connection = await asyncpg.connect(database_url)
    try:
        for position, (snapshot_id, status, name) in enumerate(zip(snapshot_ids, statuses, names)):
            await connection.execute(
                """
                INSERT INTO snapshots (snapshot_id, file_system_id, snapshot_name, status, retention_days,
                                       source_file_system_size, created_at, completed_at)
                VALUES ($1, $2, $3, $4, -1, 100, now() - make_interval(secs => $5),
                        CASE WHEN $4 = 'progressing' THEN NULL ELSE now() END)
                """,
                snapshot_id,
                file_system_id,
                name,
                status,
                float(10 - position),
            )
    finally:
        await connection.close()
    return file_system_id, snapshot_ids


async def test_newest_first(api, five_snapshots):
    file_system_id, snapshot_ids = five_snapshots

    page = await api.snapshots.DescribeSnapshots(describe(file_system_id=file_system_id))

    assert [snapshot.snapshot_id for snapshot in page.snapshots] == snapshot_ids[::-1]
    assert page.total_count == 5
    assert page.page_number == 1
    assert page.page_size == 10
    assert page.request_id


async def test_paging_covers_every_snapshot_once(api, five_snapshots):
    file_system_id, snapshot_ids = five_snapshots

    seen = []
    for number in (1, 2, 3):
        page = await api.snapshots.DescribeSnapshots(
            describe(file_system_id=file_system_id, page_number=number, page_size=2)
        )
        assert page.total_count == 5
        seen += [snapshot.snapshot_id for snapshot in page.snapshots]

    assert seen == snapshot_ids[::-1]


async def test_page_past_end_is_empty(api, five_snapshots):
    file_system_id, _ = five_snapshots

    page = await api.snapshots.DescribeSnapshots(describe(file_system_id=file_system_id, page_number=100))

    assert page.total_count == 5
    assert list(page.snapshots) == []


async def test_largest_page_number_accepted(api, five_snapshots):
    file_system_id, _ = five_snapshots

    page = await api.snapshots.DescribeSnapshots(
        describe(file_system_id=file_system_id, page_number=2**31 - 1, page_size=100)
    )

    assert list(page.snapshots) == []


async def test_filter_by_status(api, five_snapshots):
    file_system_id, snapshot_ids = five_snapshots

    accomplished = await api.snapshots.DescribeSnapshots(describe(file_system_id=file_system_id, status="accomplished"))
    failed = await api.snapshots.DescribeSnapshots(describe(file_system_id=file_system_id, status="failed"))
    everything = await api.snapshots.DescribeSnapshots(describe(file_system_id=file_system_id, status="all"))

    assert [s.snapshot_id for s in accomplished.snapshots] == [snapshot_ids[3], snapshot_ids[2], snapshot_ids[0]]
    assert [s.snapshot_id for s in failed.snapshots] == [snapshot_ids[1]]
    assert everything.total_count == 5


async def test_filter_by_name_exact(api, five_snapshots):
    file_system_id, snapshot_ids = five_snapshots

    page = await api.snapshots.DescribeSnapshots(describe(file_system_id=file_system_id, snapshot_name="Alpha"))
    partial = await api.snapshots.DescribeSnapshots(describe(file_system_id=file_system_id, snapshot_name="Alp"))

    assert [s.snapshot_id for s in page.snapshots] == [snapshot_ids[2], snapshot_ids[0]]
    assert partial.total_count == 0


async def test_filter_by_ids(api, five_snapshots):
    _, snapshot_ids = five_snapshots
    unknown = ids.new_snapshot_id()

    page = await api.snapshots.DescribeSnapshots(describe(snapshot_ids=[snapshot_ids[1], unknown, snapshot_ids[3]]))

    assert [s.snapshot_id for s in page.snapshots] == [snapshot_ids[3], snapshot_ids[1]]


async def test_unknown_id_gives_empty_page(api):
    page = await api.snapshots.DescribeSnapshots(describe(snapshot_ids=[ids.new_snapshot_id()]))

    assert page.total_count == 0
    assert list(page.snapshots) == []


async def test_unknown_file_system_gives_empty_page(api):
    page = await api.snapshots.DescribeSnapshots(describe(file_system_id="extreme-unknown0"))

    assert page.total_count == 0


async def test_snapshot_type_filter(api, five_snapshots):
    file_system_id, _ = five_snapshots

    user = await api.snapshots.DescribeSnapshots(describe(file_system_id=file_system_id, snapshot_type="user"))
    auto = await api.snapshots.DescribeSnapshots(describe(file_system_id=file_system_id, snapshot_type="auto"))

    assert user.total_count == 5
    assert auto.total_count == 0


async def test_hundred_ids_accepted(api):
    page = await api.snapshots.DescribeSnapshots(describe(snapshot_ids=[ids.new_snapshot_id() for _ in range(100)]))

    assert page.total_count == 0


BAD_FILTERS = [
    ("page number zero", {"page_number": 0}, "InvalidParameter.PageNumber"),
    ("page number negative", {"page_number": -1}, "InvalidParameter.PageNumber"),
    ("page size zero", {"page_size": 0}, "InvalidParameter.PageSize"),
    ("page size 101", {"page_size": 101}, "InvalidParameter.PageSize"),
    ("status unknown", {"status": "deleted"}, "InvalidParameter.Status"),
    ("status wrong case", {"status": "Accomplished"}, "InvalidParameter.Status"),
    ("type unknown", {"snapshot_type": "manual"}, "InvalidParameter.SnapshotType"),
    ("file system id bad", {"file_system_id": "../x"}, "InvalidParameter.FileSystemId"),
    ("snapshot id bad", {"snapshot_ids": ["s-extreme-SHORT"]}, "InvalidParameter.SnapshotIds"),
    ("101 snapshot ids", {"snapshot_ids": ["s-extreme-" + "a" * 17] * 101}, "InvalidParameter.SnapshotIds"),
    ("name filter NUL", {"snapshot_name": "bad name\x00"}, "InvalidParameter.SnapshotName"),
    ("name filter too long", {"snapshot_name": "a" * 129}, "InvalidParameter.SnapshotName"),
]


@pytest.mark.parametrize(("fields", "code"), [case[1:] for case in BAD_FILTERS], ids=[c[0] for c in BAD_FILTERS])
async def test_bad_filter_rejected(api, fields, code):
    error = await error_details(api.snapshots.DescribeSnapshots(describe(**fields)))

    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == code
