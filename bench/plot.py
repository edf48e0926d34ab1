"""The PNG: time to a ready rig and teardown against N (log2 x), p50 line and min-max band."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

SERIES = (
    ("ready_s", "process", "time to ready, process", "tab:blue", "-"),
    ("ready_s", "docker", "time to ready, docker", "tab:purple", "-"),
    ("teardown_s", "process", "teardown, process", "tab:orange", "--"),
    ("teardown_s", "docker", "teardown, docker", "tab:red", "--"),
)
FLOOR_POINTS = (("4 ready p50", 4, 1.5), ("16 ready p50", 16, 6.0), ("4 teardown p50", 4, 1.0))


def series_points(node: Mapping[str, Any]) -> tuple[list[int], list[float], list[float], list[float]]:
    """N, p50, min, max of one figure, sorted by N."""
    ns = sorted(int(k) for k in node if k.isdigit())
    return (
        ns,
        [node[str(n)]["p50"] for n in ns],
        [node[str(n)]["min"] for n in ns],
        [node[str(n)]["max"] for n in ns],
    )


def plot(figures: Mapping[str, Any], path: Path, title: str) -> Path | None:
    """Write the plot; None when matplotlib is not installed (``pip install -e '.[bench]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    all_ns: set[int] = set()
    for key, backend, label, color, style in SERIES:
        node = figures.get(key, {}).get(backend)
        if not node:
            continue
        ns, p50, lo, hi = series_points(node)
        if not ns:
            continue
        all_ns.update(ns)
        ax.plot(ns, p50, style, marker="o", color=color, label=f"{label} (p50)")
        ax.fill_between(ns, lo, hi, color=color, alpha=0.18, linewidth=0)
    for label, n, limit in FLOOR_POINTS:
        if n not in all_ns:
            continue
        ax.plot([n], [limit], marker="_", markersize=18, color="black", linestyle="none")
        ax.annotate(
            f"floor: {label} <= {limit:g}s",
            (n, limit),
            textcoords="offset points",
            xytext=(-8, 4),
            ha="right",
            fontsize=7,
        )
    ax.set_xscale("log", base=2)
    if all_ns:
        ticks = sorted(all_ns)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(n) for n in ticks])
    ax.set_xlabel("pairs in the rig (N)")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
