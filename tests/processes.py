"""Worker and API processes for fault tests, started and killed like real pods."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from service.settings import Settings

REPOSITORY = Path(__file__).resolve().parent.parent

__all__ = ["Process", "environment_for"]


def environment_for(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "NAS_DATABASE_URL": settings.database_url,
        "NAS_AMQP_URL": settings.amqp_url,
        "NAS_DATA_ROOT": str(settings.data_root),
        "NAS_MIGRATE_ON_START": "false",
        "NAS_LOG_LEVEL": "DEBUG",
        "NAS_THROTTLE_LIMIT": str(settings.throttle_limit),
        **extra,
    }


class Process:
    """A child process whose output goes to a log file."""

    def __init__(self, arguments: list[str], environment: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as output:
            self.popen = subprocess.Popen(
                [sys.executable, *arguments], env=environment, cwd=REPOSITORY, stdout=output, stderr=output
            )

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def terminate(self, timeout: float = 40) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")
