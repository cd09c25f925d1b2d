"""A worker process whose driver stops right after a copy, before the database update.

Run as `python -m tests.pausing_worker MARKER` with the usual NAS_*
settings. After each finished copy it creates the file MARKER and then
waits forever, so a test can SIGKILL it in the window between the copy
and the commit-then-ack that a real crash could hit.
"""

from __future__ import annotations

import asyncio
import pathlib
import sys

from service.logs import configure_logging
from service.runtime import open_database
from service.settings import Settings
from worker.app import Worker
from worker.drivers.local import LocalDriver


class PausingDriver(LocalDriver):
    def __init__(self, data_root: pathlib.Path, marker: pathlib.Path) -> None:
        super().__init__(data_root)
        self.marker = marker

    async def create_snapshot(self, file_system_id, snapshot_id, on_progress, cancel):
        result = await super().create_snapshot(file_system_id, snapshot_id, on_progress, cancel)
        self.marker.write_text(snapshot_id)
        await asyncio.Event().wait()
        return result


async def main(marker: pathlib.Path) -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format, settings.secrets)
    database = await open_database(settings, "nas-snapshots-pausing-worker")
    worker = Worker(settings, database, driver=PausingDriver(settings.data_root, marker))
    await worker.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(pathlib.Path(sys.argv[1])))
