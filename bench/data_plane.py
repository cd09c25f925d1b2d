"""The local driver's copy against `cp -a --reflink=auto`, and btrfs snapshot time against file system size.

Usage: .venv/bin/python -m bench.data_plane [--rounds N] [--directory PATH] [--large-files N] [--large-mib N]

Copies. Two trees are copied, one of 10,000 files of 4 KiB in 100
directories and one of a few large files (4 x 256 MiB by default, random
data, not sparse). The subject is `LocalDriver.create_snapshot`, which copies
the file system's directory into a snapshot directory. The baseline is
`cp -a --reflink=auto` of the same directory to a new directory on the same
file system. Rounds alternate the two, in an order that swaps every round.
Neither fsyncs, so the times are the time to copy into the page cache: every
copy is removed and `sync` run after it, outside the timing, so the next one
starts without dirty pages. The source stays in the page cache throughout.
The trees go under --directory (default: the system temporary directory),
on whatever file system that is; where it supports reflinks both sides clone.

Btrfs. When `worker/drivers/btrfs.py` exists and this host can mount a btrfs
image on a loop device (root, btrfs-progs, losetup), the run also makes a
sparse btrfs image under --directory and measures
`BtrfsDriver.create_snapshot` on a file system that grows in steps, in bytes
(a few large files) and in file count (4 KiB files), against a bare
`btrfs subvolume snapshot -r` of the same subvolume. Each snapshot starts
after `sync`, so the kernel has no dirty data to write out first. The same
copies as above also run on the btrfs file system, where both sides clone
with reflinks. The image is unmounted, detached and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench._common import (
    REPOSITORY,
    add_common_arguments,
    print_machine,
    print_table,
    ratio_summary,
    run_bounded,
    spread,
    write_json,
)
from service.domain.ids import new_snapshot_id
from worker.drivers.local import LocalDriver

SMALL_FILES = 10_000
SMALL_FILES_PER_DIRECTORY = 100
SMALL_FILE_BYTES = 4096
# btrfs file system sizes, in MiB of large files and in number of 4 KiB files.
BTRFS_MIB_STEPS = (0, 64, 256, 1024)
BTRFS_FILE_STEPS = (0, 1_000, 10_000, 30_000)
BTRFS_IMAGE_BYTES = 8 * 2**30
_COMMAND_TIMEOUT = 120


class BtrfsUnavailable(Exception):
    """This host cannot run the btrfs part, for the reason in the message."""


def make_small_tree(root: Path, files: int = SMALL_FILES) -> None:
    payload = os.urandom(SMALL_FILE_BYTES)
    for index in range(files):
        directory = root / f"d{index // SMALL_FILES_PER_DIRECTORY:03d}"
        if index % SMALL_FILES_PER_DIRECTORY == 0:
            directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{index:05d}").write_bytes(payload)


def make_large_tree(root: Path, files: int, mib: int, prefix: str = "large") -> None:
    root.mkdir(parents=True, exist_ok=True)
    block = os.urandom(2**20)
    for index in range(files):
        with open(root / f"{prefix}{index}.bin", "wb") as output:
            for _ in range(mib):
                output.write(block)


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with status {result.returncode}: {result.stderr.strip()}")
    return result


async def driver_snapshot_seconds(driver, file_system_id: str) -> float:
    """Time one snapshot with the driver, then delete it and sync outside the timing."""
    snapshot_id = new_snapshot_id()
    started = time.perf_counter()
    await driver.create_snapshot(file_system_id, snapshot_id, lambda _progress: None, threading.Event())
    elapsed = time.perf_counter() - started
    await driver.delete_snapshot(file_system_id, snapshot_id)
    os.sync()
    return elapsed


def cp_copy_seconds(source: Path, scratch: Path) -> float:
    destination = scratch / f"copy-{time.monotonic_ns()}"
    started = time.perf_counter()
    run(["cp", "-a", "--reflink=auto", str(source), str(destination)])
    elapsed = time.perf_counter() - started
    shutil.rmtree(destination)
    os.sync()
    return elapsed


async def compare_copies(data_root: Path, location: str, trees: dict[str, str], rounds: int) -> list[dict]:
    """Copy each tree with the local driver and with cp in alternating order; return one row per copy."""
    driver = LocalDriver(data_root)
    scratch = data_root / "cp-copies"
    scratch.mkdir(exist_ok=True)
    results = []
    for tree, file_system_id in trees.items():
        source = data_root / "file-systems" / file_system_id
        # One untimed copy of each kind fills the caches.
        await driver_snapshot_seconds(driver, file_system_id)
        cp_copy_seconds(source, scratch)
        for index in range(rounds):
            order = ("driver", "cp") if index % 2 == 0 else ("cp", "driver")
            for tool in order:
                if tool == "driver":
                    seconds = await driver_snapshot_seconds(driver, file_system_id)
                else:
                    seconds = cp_copy_seconds(source, scratch)
                results.append({"location": location, "tree": tree, "tool": tool, "round": index, "seconds": seconds})
                print(f"{location} {tree} round={index} {tool:<6} {seconds:.3f} s", file=sys.stderr)
    return results


def prepare_trees(data_root: Path, large_files: int, large_mib: int) -> dict[str, str]:
    """Make the two trees as file systems of the local driver; return tree label to file system id."""
    trees = {
        f"{SMALL_FILES:,} files of 4 KiB": "extreme-small-tree",
        f"{large_files} files of {large_mib} MiB": "extreme-large-tree",
    }
    small, large = (data_root / "file-systems" / file_system_id for file_system_id in trees.values())
    make_small_tree(small)
    make_large_tree(large, large_files, large_mib)
    os.sync()
    return trees


@contextlib.contextmanager
def mounted_btrfs(directory: Path) -> Iterator[Path]:
    """Mount a new btrfs file system from a sparse image on a loop device; yield its mount point."""
    if not (REPOSITORY / "worker" / "drivers" / "btrfs.py").exists():
        raise BtrfsUnavailable("pending: worker/drivers/btrfs.py does not exist yet")
    if os.geteuid() != 0:
        raise BtrfsUnavailable("skipped: attaching a loop device and mounting need root")
    for tool in ("mkfs.btrfs", "btrfs", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            raise BtrfsUnavailable(f"skipped: {tool} is not installed")

    image = directory / "btrfs.img"
    mount_point = directory / "btrfs"
    mount_point.mkdir()
    with open(image, "wb") as image_file:
        image_file.truncate(BTRFS_IMAGE_BYTES)
    try:
        run(["mkfs.btrfs", "--quiet", str(image)])
        attached = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True, timeout=60)
        if attached.returncode != 0:
            raise BtrfsUnavailable(f"skipped: no loop device could be attached: {attached.stderr.strip()}")
        device = attached.stdout.strip()
        try:
            mounted = subprocess.run(["mount", "-t", "btrfs", device, str(mount_point)], capture_output=True, text=True, timeout=60)
            if mounted.returncode != 0:
                raise BtrfsUnavailable(f"skipped: mounting btrfs failed: {mounted.stderr.strip()}")
            try:
                yield mount_point
            finally:
                _unmount(mount_point)
        finally:
            run(["losetup", "--detach", device])
    finally:
        image.unlink(missing_ok=True)


def _unmount(mount_point: Path) -> None:
    for _ in range(25):
        if subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=60).returncode == 0:
            return
        time.sleep(0.2)
    run(["umount", "--lazy", str(mount_point)])


async def btrfs_series(mount_point: Path, rounds: int) -> list[dict]:
    """Time driver and bare snapshots while one file system grows in bytes, and another in files."""
    from worker.drivers.btrfs import BtrfsDriver

    driver = BtrfsDriver(mount_point)
    results = []
    for axis, steps in (("MiB", BTRFS_MIB_STEPS), ("files", BTRFS_FILE_STEPS)):
        file_system_id = f"extreme-btrfs-{axis.lower()}"
        await driver.provision_file_system(file_system_id)
        source = mount_point / "file-systems" / file_system_id
        bare_target = mount_point / "bare-snapshots"
        bare_target.mkdir(exist_ok=True)
        written = 0
        for step in steps:
            if axis == "MiB" and step > written:
                make_large_tree(source, 1, step - written, prefix=f"grow{written}-")
            elif axis == "files" and step > written:
                make_small_tree(source / f"batch{written}", step - written)
            written = step
            os.sync()
            for index in range(rounds):
                order = ("driver", "bare") if index % 2 == 0 else ("bare", "driver")
                for tool in order:
                    os.sync()
                    if tool == "driver":
                        seconds = await driver_snapshot_seconds(driver, file_system_id)
                    else:
                        destination = bare_target / f"snapshot-{time.monotonic_ns()}"
                        started = time.perf_counter()
                        run(["btrfs", "subvolume", "snapshot", "-r", str(source), str(destination)])
                        seconds = time.perf_counter() - started
                        run(["btrfs", "subvolume", "delete", str(destination)])
                    results.append({"axis": axis, "size": step, "tool": tool, "round": index, "seconds": seconds})
                    print(f"btrfs {axis}={step} round={index} {tool:<6} {1000 * seconds:.1f} ms", file=sys.stderr)
    return results


async def main(arguments: argparse.Namespace) -> None:
    machine = await print_machine()
    base = Path(arguments.directory) if arguments.directory else None
    copies: list[dict] = []
    btrfs: list[dict] = []
    btrfs_status = ""
    with tempfile.TemporaryDirectory(prefix="nas-bench-data-plane-", dir=base) as directory:
        work = Path(directory)
        file_system_type = run(["stat", "-f", "-c", "%T", str(work)]).stdout.strip()
        data_root = work / "data"
        trees = prepare_trees(data_root, arguments.large_files, arguments.large_mib)
        copies += await compare_copies(data_root, f"{file_system_type} ({work})", trees, arguments.rounds)
        shutil.rmtree(data_root)

        try:
            with mounted_btrfs(work) as mount_point:
                btrfs += await btrfs_series(mount_point, arguments.rounds)
                reflink_root = mount_point / "reflink-data"
                trees = prepare_trees(reflink_root, arguments.large_files, arguments.large_mib)
                copies += await compare_copies(reflink_root, "btrfs on a loop device", trees, arguments.rounds)
                btrfs_status = "measured"
        except BtrfsUnavailable as exc:
            btrfs_status = str(exc)
            print(f"btrfs part {btrfs_status}", file=sys.stderr)

    report(arguments, copies, btrfs, btrfs_status)
    write_json(
        arguments.json,
        {"machine": machine, "arguments": vars(arguments), "copies": copies, "btrfs": btrfs, "btrfs_status": btrfs_status},
    )


def report(arguments: argparse.Namespace, copies: list[dict], btrfs: list[dict], btrfs_status: str) -> None:
    def select(rows: list[dict], tool: str, **match: object) -> list[float]:
        chosen = [r for r in rows if r["tool"] == tool and all(r[k] == v for k, v in match.items())]
        return [r["seconds"] for r in sorted(chosen, key=lambda r: r["round"])]

    table = []
    for location, tree in dict.fromkeys((r["location"], r["tree"]) for r in copies):
        driver = select(copies, "driver", location=location, tree=tree)
        cp = select(copies, "cp", location=location, tree=tree)
        table.append([location, tree, spread(driver, 3), spread(cp, 3), ratio_summary(driver, cp)])
    print_table(
        f"Copy time in seconds: median (min-max) of {arguments.rounds} rounds, alternating",
        ["File system", "Tree", "LocalDriver.create_snapshot s", "cp -a --reflink=auto s", "Driver / cp"],
        table,
    )

    if not btrfs:
        print(f"\nBtrfs snapshot time against size: {btrfs_status}")
        return
    table = []
    for axis, size in dict.fromkeys((r["axis"], r["size"]) for r in btrfs):
        driver = [1000 * s for s in select(btrfs, "driver", axis=axis, size=size)]
        bare = [1000 * s for s in select(btrfs, "bare", axis=axis, size=size)]
        label = f"{size} MiB in large files" if axis == "MiB" else f"{size:,} files of 4 KiB"
        table.append([label, spread(driver, 1), spread(bare, 1), ratio_summary(driver, bare)])
    print_table(
        f"Btrfs snapshot time in ms against file system size: median (min-max) of {arguments.rounds} rounds",
        ["File system holds", "BtrfsDriver.create_snapshot ms", "btrfs subvolume snapshot -r ms", "Driver / bare"],
        table,
    )


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.data_plane", description=__doc__.splitlines()[0])
    add_common_arguments(parser, rounds=3)
    parser.add_argument("--directory", help="where to make the trees (default: the system temporary directory)")
    parser.add_argument("--large-files", type=int, default=4, help="files in the large tree (default %(default)s)")
    parser.add_argument("--large-mib", type=int, default=256, help="MiB per large file (default %(default)s)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_bounded(main(parse_arguments()), budget=175)
