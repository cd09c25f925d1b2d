"""Draw the PNG plots of docs/benchmarks.md from the JSON that the benchmarks write with --json.

Usage: .venv/bin/python -m bench.plots RESULTS_DIRECTORY [--output docs]

RESULTS_DIRECTORY contains <benchmark>.json files, for example from
`.venv/bin/python -m bench.create_throughput --json results/create_throughput.json`.
A plot whose JSON is missing is skipped. Needs matplotlib.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _median_and_range(values: list[float]) -> tuple[float, float, float]:
    middle = statistics.median(values)
    return middle, middle - min(values), max(values) - middle


def _error_plot(axis, xs, groups: list[list[float]], label: str, marker: str = "o") -> None:
    stats = [_median_and_range(group) for group in groups]
    axis.errorbar(
        xs,
        [s[0] for s in stats],
        yerr=[[s[1] for s in stats], [s[2] for s in stats]],
        label=label,
        marker=marker,
        capsize=3,
    )


def plot_create_throughput(data: dict, output: Path) -> None:
    rounds = data["rounds"]
    callers = sorted({r["callers"] for r in rounds})
    labels = {"noop": "Health/Check (no-op)", "create": "CreateSnapshot"}
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(10, 4))
    for method, label in labels.items():
        by_callers = [[r["throughput"] for r in rounds if r["method"] == method and r["callers"] == c] for c in callers]
        _error_plot(throughput, callers, by_callers, label)
    for field, marker in (("p50_ms", "o"), ("p99_ms", "s")):
        by_callers = [[r[field] for r in rounds if r["method"] == "create" and r["callers"] == c] for c in callers]
        _error_plot(latency, callers, by_callers, f"CreateSnapshot {field.removesuffix('_ms')}", marker)
    throughput.set(xlabel="concurrent callers", ylabel="calls per second", xscale="log", title="Throughput")
    latency.set(xlabel="concurrent callers", ylabel="ms", xscale="log", yscale="log", title="CreateSnapshot latency")
    for axis in (throughput, latency):
        axis.set_xticks(callers, [str(c) for c in callers])
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.suptitle("Median and range over rounds")
    figure.tight_layout()
    figure.savefig(output / "benchmarks-create-throughput.png", dpi=110)
    plt.close(figure)


def plot_admission(data: dict, output: Path) -> None:
    rounds = data["rounds"]
    connections = sorted({r["connections"] for r in rounds})
    variants = list(dict.fromkeys(r["variant"] for r in rounds))
    labels = {
        "project": "admit_snapshot (asyncpg pool)",
        "pgbench": "pgbench, same statements",
        "pgbench_no_notify": "pgbench, without NOTIFY",
        "project_no_reset": "prototype: pool without reset",
        "function_asyncpg": "prototype: one function call, asyncpg",
        "pgbench_function": "prototype: one function call, pgbench",
    }
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for variant in variants:
        groups = [[r["tps"] for r in rounds if r["variant"] == variant and r["connections"] == c] for c in connections]
        _error_plot(axis, connections, groups, labels.get(variant, variant))
    axis.set(xlabel="connections", ylabel="transactions per second", title="Admission transaction: median and range over rounds")
    axis.set_xticks(connections, [str(c) for c in connections])
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output / "benchmarks-admission.png", dpi=110)
    plt.close(figure)


def plot_btrfs(data: dict, output: Path) -> None:
    rows = data.get("btrfs") or []
    if not rows:
        return
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, (unit, xlabel) in zip(axes, (("MiB", "MiB in large files"), ("files", "4 KiB files"))):
        sizes = sorted({r["size"] for r in rows if r["axis"] == unit})
        for tool, label in (("driver", "BtrfsDriver.create_snapshot"), ("bare", "btrfs subvolume snapshot -r")):
            groups = [[1000 * r["seconds"] for r in rows if r["axis"] == unit and r["size"] == s and r["tool"] == tool] for s in sizes]
            _error_plot(axis, sizes, groups, label)
        axis.set(xlabel=xlabel, ylabel="ms", title=f"Snapshot time against {xlabel}")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output / "benchmarks-btrfs.png", dpi=110)
    plt.close(figure)


def plot_table_scale(data: dict, output: Path) -> None:
    results = data["results"]
    operations = list(dict.fromkeys(r["operation"] for r in results))
    figure, axis = plt.subplots(figsize=(9, 4.5))
    width = 0.38
    for offset, (size, label) in enumerate((("small", "10,000 rows"), ("large", f"{data['arguments']['large_rows']:,} rows"))):
        medians = [statistics.median(r["ms"] for r in results if r["operation"] == o and r["size"] == size) for o in operations]
        axis.barh([i + offset * width for i in range(len(operations))], medians, height=width, label=label)
    axis.set_yticks([i + width / 2 for i in range(len(operations))], operations, fontsize=8)
    axis.invert_yaxis()
    axis.set(xscale="log", xlabel="ms (median over rounds)", title="Latency against table size")
    axis.grid(True, axis="x", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(output / "benchmarks-table-scale.png", dpi=110)
    plt.close(figure)


PLOTS = {
    "create_throughput": plot_create_throughput,
    "admission_sql": plot_admission,
    "data_plane": plot_btrfs,
    "table_scale": plot_table_scale,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="directory with the benchmarks' JSON files")
    parser.add_argument("--output", type=Path, default=Path("docs"), help="directory for the PNG files (default docs)")
    arguments = parser.parse_args()
    for name, plot in PLOTS.items():
        path = arguments.results / f"{name}.json"
        if path.exists():
            plot(json.loads(path.read_text()), arguments.output)
            print(f"Plotted {path}")
        else:
            print(f"Skipped {name}: {path} does not exist")


if __name__ == "__main__":
    main()
