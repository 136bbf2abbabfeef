"""Plots of the Ackley quality benchmark (``benchmarks/ackley_quality.py``): best value so far
against evaluations, mean and spread over seeds, one line per method, retrains marked; and the
evaluations each method needed to reach the sample set's best point, seed by seed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

_METADATA = {"Software": None}  # same data, same bytes


@dataclass
class MethodRuns:
    """One method's runs over seeds."""

    label: str
    curves: list[list[float]]  # best value so far after 1..n evaluations, one list per seed
    evals_to_best: list[int | None]  # per seed; None: the set's best point was never evaluated
    retrains_at: list[list[int]] = field(default_factory=list)  # per seed: evaluations done when each retrain applied


def _stack(curves: list[list[float]]) -> np.ndarray:
    n = max(len(c) for c in curves)
    return np.array([c + [c[-1]] * (n - len(c)) if c else [np.nan] * n for c in curves], dtype=float)


def _mean_marks(retrains_at: list[list[int]]) -> list[float]:
    """Mean evaluation count at which retrain k was applied, over the seeds that had it."""
    depth = max((len(r) for r in retrains_at), default=0)
    return [float(np.mean([r[k] for r in retrains_at if len(r) > k])) for k in range(depth)]


def plot_best_so_far(methods: list[MethodRuns], out: Path, title: str, set_best: list[float] | None = None,
                     retrain_after: int | None = None) -> Path:
    """Mean best-so-far over seeds (line) and +-1 standard deviation (band); retrains as
    triangles on each line at the mean evaluation count where they were applied. Panels: every
    evaluation; the first quarter; and (with ``set_best``, one value per seed) the first
    quarter as the gap to each seed's set best, which takes out how good each seed's sample is."""
    panels = ["all", "zoom"] + (["gap"] if set_best else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8))
    for ax, panel in zip(axes, panels, strict=True):
        for i, m in enumerate(methods):
            data = _stack(m.curves)
            if panel == "gap" and set_best:
                data = data - np.array(set_best, dtype=float)[: len(data), None]
            mean, sd = data.mean(axis=0), data.std(axis=0)
            n = data.shape[1] if panel == "all" else max(1, data.shape[1] // 4)
            xs = np.arange(1, n + 1)
            color = f"C{i}"
            ax.plot(xs, mean[:n], color=color, label=m.label, linewidth=1.6)
            ax.fill_between(xs, (mean - sd)[:n], (mean + sd)[:n], color=color, alpha=0.12, linewidth=0)
            marks = [x for x in _mean_marks(m.retrains_at) if x <= n]
            if marks:
                ax.plot(marks, np.interp(marks, xs, mean[:n]), linestyle="none", marker="v", markersize=6,
                        color=color, markeredgecolor="black", markeredgewidth=0.5)
        if panel != "gap" and set_best:
            ax.axhline(float(np.mean(set_best)), color="black", linestyle="--", linewidth=0.8,
                       label="the sample set's best (mean)")
        if retrain_after and panel != "all":
            for k in range(retrain_after, n + 1, retrain_after):
                ax.axvline(k, color="grey", linestyle=":", linewidth=0.6)
        ax.set_xlabel("evaluations (completion order)")
        ax.set_ylabel("best so far minus the set's best" if panel == "gap" else "best Ackley value so far")
        ax.set_title({"all": "all evaluations", "zoom": "first quarter (dotted: retrain due)",
                      "gap": "first quarter: gap to the set's best"}[panel])
        ax.grid(alpha=0.3)
    axes[0].plot([], [], linestyle="none", marker="v", color="grey", markeredgecolor="black",
                 label="retrain applied (mean over seeds)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, out / "best_so_far.png")


def plot_evals_to_best(methods: list[MethodRuns], out: Path, title: str) -> Path:
    """Evaluations to reach the sample set's best point: one dot per seed, median as a bar."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rng = np.random.default_rng(0)
    for i, m in enumerate(methods):
        vals = [v for v in m.evals_to_best if v is not None]
        if not vals:
            continue
        jitter = rng.uniform(-0.12, 0.12, len(vals))
        ax.scatter(np.full(len(vals), i) + jitter, vals, color=f"C{i}", s=22, zorder=3)
        med = float(np.median(vals))
        ax.hlines(med, i - 0.3, i + 0.3, color="black", linewidth=2, zorder=4)
        ax.annotate(f"median {med:g}", (i + 0.32, med), fontsize=8, va="center")
    ax.set_xticks(range(len(methods)), [m.label for m in methods])
    ax.set_ylabel("evaluations until the set's best point is evaluated")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks([25, 50, 100, 200, 400, 750])
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out / "evals_to_best.png")


def plot_predicted_vs_actual(predicted: np.ndarray, actual: np.ndarray, out: Path, title: str,
                             highlight: int | None = None, name: str = "predicted_vs_actual.png") -> Path:
    """The surrogate's predictions for points it was not trained on against their true values;
    ``highlight``: index of a point to mark (the sample set's best)."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(actual, predicted, s=8, alpha=0.5, label="queued points")
    if highlight is not None:
        ax.scatter([actual[highlight]], [predicted[highlight]], s=80, marker="*", color="C3", zorder=3,
                   label="the set's best point")
        ax.legend(fontsize=8)
    lo, hi = float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle=":")
    ax.set_xlabel("actual Ackley value")
    ax.set_ylabel("GP predicted mean")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out / name)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=_METADATA)
    plt.close(fig)
    return path
