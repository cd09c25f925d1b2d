"""A local driver with hooks that let tests hold a copy and count deletes."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from worker.drivers.base import Progress, ProgressCallback, SnapshotCancelled, SnapshotResult
from worker.drivers.local import LocalDriver

__all__ = ["GatedDriver"]


class GatedDriver(LocalDriver):
    """A local driver that pauses copies of the file systems in `held` until `gate` is set.

    Copies of other file systems, such as snapshots left in the queue by
    earlier tests, run at once. A held copy reports progress and checks
    the cancel event while it waits, as a long real copy does between
    files.
    """

    def __init__(self, *arguments: object, **keywords: object) -> None:
        super().__init__(*arguments, **keywords)
        self.held: set[str] = set()
        self.gate = asyncio.Event()
        self.waiting: list[str] = []
        self.cancelled: list[str] = []
        self.deleted: list[str] = []

    async def create_snapshot(
        self, file_system_id: str, snapshot_id: str, on_progress: ProgressCallback, cancel: threading.Event
    ) -> SnapshotResult:
        if file_system_id in self.held:
            self.waiting.append(snapshot_id)
        while file_system_id in self.held and not self.gate.is_set():
            if cancel.is_set():
                self.cancelled.append(snapshot_id)
                raise SnapshotCancelled(f"snapshot {snapshot_id} cancelled while held")
            on_progress(Progress(bytes_done=10, bytes_total=100, remain_seconds=5))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gate.wait(), 0.05)
        return await super().create_snapshot(file_system_id, snapshot_id, on_progress, cancel)

    async def delete_snapshot(self, file_system_id: str, snapshot_id: str) -> None:
        self.deleted.append(snapshot_id)
        await super().delete_snapshot(file_system_id, snapshot_id)
