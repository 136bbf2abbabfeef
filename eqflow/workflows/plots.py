"""PNG plots of a run: best value so far against evaluations (beside a FIFO baseline when
one was run), and open tasks and pools over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def best_so_far(values_in_order: list[float]) -> list[float]:
    out, best = [], float("inf")
    for v in values_in_order:
        best = min(best, v)
        out.append(best)
    return out


def plot_best(out: Path, runs: dict[str, list[float]]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, values in runs.items():
        ax.plot(range(1, len(values) + 1), best_so_far(values), label=label)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("best Ackley value so far")
    ax.set_title("Best value found")
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "best_so_far.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_trace(out: Path, trace: list[dict[str, Any]]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    t = [p["t"] for p in trace]
    ax.plot(t, [p["open"] for p in trace], label="open tasks (queued + running)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("tasks")
    ax2 = ax.twinx()
    ax2.step(t, [p["pools"] for p in trace], where="post", color="tab:red", label="pools")
    ax2.set_ylabel("pools")
    ax2.set_ylim(0, max([p["pools"] for p in trace] + [1]) + 1)
    ax.set_title("Queue depth and pools over time")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right")
    path = out / "queue_and_pools.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
