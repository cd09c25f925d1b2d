"""A btrfs file system in an image file on a loop device, for tests of the btrfs driver.

`mounted_btrfs` skips the test when this host cannot make one: the tests
need root, mkfs.btrfs, the btrfs command and losetup, and a kernel that
mounts btrfs. Whatever the test does, the file system is unmounted, the
loop device detached and the image removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

__all__ = ["mounted_btrfs"]

# Large enough for mkfs.btrfs defaults and the tests' files. The image is
# sparse, so it uses disk space only for what the tests write.
IMAGE_BYTES = 512 * 1024 * 1024

# Seconds one setup or teardown command may take.
_COMMAND_TIMEOUT = 60

# A busy unmount is retried this many times, 0.2 s apart, before the lazy unmount.
_UNMOUNT_ATTEMPTS = 25


@contextlib.contextmanager
def mounted_btrfs(directory: Path, mount_options: Sequence[str] = ()) -> Iterator[Path]:
    """Mount a new btrfs file system at `directory`/btrfs and yield that path.

    The image file goes into `directory` too, which should be the test's tmp_path.
    """
    _skip_unless_possible()

    image = directory / "btrfs.img"
    mount_point = directory / "btrfs"
    mount_point.mkdir()
    with open(image, "wb") as image_file:
        image_file.truncate(IMAGE_BYTES)

    try:
        _run(["mkfs.btrfs", "--quiet", str(image)])
        attached = _run_or_skip(["losetup", "--find", "--show", str(image)], "no loop device could be attached")
        device = attached.stdout.strip()
        try:
            options = ["-o", ",".join(mount_options)] if mount_options else []
            _run_or_skip(["mount", "-t", "btrfs", *options, device, str(mount_point)], "mounting btrfs failed")
            try:
                yield mount_point
            finally:
                _unmount(mount_point)
        finally:
            _run(["losetup", "--detach", device])
    finally:
        image.unlink(missing_ok=True)


def _skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("btrfs driver tests need root to attach loop devices and mount file systems")
    for tool, package in (("mkfs.btrfs", "btrfs-progs"), ("btrfs", "btrfs-progs"), ("losetup", "util-linux")):
        if shutil.which(tool) is None:
            pytest.skip(f"btrfs driver tests need {tool}; install {package}")


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit status {result.returncode}: {result.stderr.strip()}")
    return result


def _run_or_skip(command: list[str], reason: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT)
    if result.returncode != 0:
        pytest.skip(f"{reason}: {' '.join(command)}: {result.stderr.strip()}")
    return result


def _unmount(mount_point: Path) -> None:
    """Unmount, retrying while the file system is busy, and detach it lazily as a last resort.

    A test that fails with files still open, or with a worker that has not
    stopped yet, keeps the mount busy for a moment.
    """
    for _ in range(_UNMOUNT_ATTEMPTS):
        if subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=_COMMAND_TIMEOUT).returncode == 0:
            return
        time.sleep(0.2)
    # With a lazy unmount the kernel releases the loop device once the last
    # user closes it, and `losetup --detach` then frees it.
    _run(["umount", "--lazy", str(mount_point)])
