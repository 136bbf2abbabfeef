"""PNG plots of a run: best value so far against evaluations (beside a FIFO baseline when
one was run), and queued/running tasks and pools over time. Retrains are marked on both."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.ticker import MaxNLocator  # noqa: E402

# Same data, same bytes: no creation date in the files.
_METADATA = {"Software": None}


@dataclass
class QueueTrace:
    times: list[float]
    queued: list[int]
    running: list[int]
    pool_times: list[float]
    pools: list[int]
    retrain_times: list[float] = field(default_factory=list)


def best_so_far(values_in_order: list[float]) -> list[float]:
    out, best = [], float("inf")
    for v in values_in_order:
        best = min(best, v)
        out.append(best)
    return out


def plot_best(out: Path, runs: dict[str, list[float]], retrain_marks: list[int] | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, values in runs.items():
        ax.plot(range(1, len(values) + 1), best_so_far(values), label=label)
    for i, mark in enumerate(retrain_marks or []):
        ax.axvline(mark, color="grey", linestyle=":", linewidth=0.8, label="retrain" if i == 0 else None)
    ax.set_xlabel("evaluations (in completion order)")
    ax.set_ylabel("best Ackley value so far")
    ax.set_title("Best value found")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out / "best_so_far.png")


def plot_queue(out: Path, trace: QueueTrace) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.step(trace.times, trace.queued, where="post", label="queued")
    ax.step(trace.times, trace.running, where="post", label="running")
    for i, at in enumerate(trace.retrain_times):
        ax.axvline(at, color="grey", linestyle=":", linewidth=0.8, label="retrain" if i == 0 else None)
    ax.set_xlabel("seconds since submission")
    ax.set_ylabel("tasks")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax.twinx()
    ax2.step(trace.pool_times, trace.pools, where="post", color="tab:red", label="pools (registered, alive)")
    ax2.set_ylabel("pools")
    ax2.set_ylim(0, max(trace.pools + [1]) + 1)
    ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Queue and pools over time (from the database)")
    lines, labels = ax.get_legend_handles_labels()
    lines2, labels2 = ax2.get_legend_handles_labels()
    ax.legend(lines + lines2, labels + labels2, loc="upper right")
    return save_figure(fig, out / "queue_and_pools.png")


def save_figure(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, metadata=_METADATA)
    plt.close(fig)
    tmp.replace(path)
    return path


def lanes(intervals: list[tuple[float, float]]) -> list[int]:
    """Greedy interval partitioning: a lane per task so that tasks in one lane never overlap;
    as many lanes as the most tasks running at once (the pool's busy workers)."""
    order = sorted(range(len(intervals)), key=lambda i: intervals[i])
    ends: list[float] = []
    lane_of = [0] * len(intervals)
    for i in order:
        start, end = intervals[i]
        free = next((k for k, e in enumerate(ends) if e <= start), None)
        if free is None:
            free = len(ends)
            ends.append(end)
        ends[free] = end
        lane_of[i] = free
    return lane_of


def plot_pool_timeline(path: Path, pool: str, tasks: list[tuple[float, float, str]],
                       retrain_times: list[float] | None = None) -> Path:
    """Gantt chart of one pool: each task a bar from start to finish on its worker lane,
    coloured by outcome (status)."""
    colors = {"complete": "tab:blue", "failed": "tab:red", "canceled": "tab:grey", "running": "tab:orange",
              "queued": "tab:grey"}
    lane_of = lanes([(s, e) for s, e, _ in tasks])
    n_lanes = max(lane_of, default=0) + 1
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * n_lanes))
    for (start, end, status), lane in zip(tasks, lane_of, strict=True):
        ax.barh(lane, max(end - start, 1e-3), left=start, height=0.8, color=colors.get(status, "tab:purple"),
                edgecolor="white", linewidth=0.4)
    for i, at in enumerate(retrain_times or []):
        ax.axvline(at, color="black", linestyle=":", linewidth=0.8, label="retrain" if i == 0 else None)
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since submission")
    ax.set_ylabel("worker lane")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{pool}: {len(tasks)} tasks")
    if retrain_times:
        ax.legend(loc="upper right")
    return save_figure(fig, path)
