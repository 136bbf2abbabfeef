"""Does reprioritization pay? The real Ackley/GPR workflow (``AckleyGPR`` on the real database,
a real local pool) with the GP surrogate under each acquisition, and in plain FIFO order, on the
same sampled points, over several seeds. Every run evaluates the whole sample set
(``num_guesses`` = ``--points``). Reported per method:

* evaluations needed to reach the sample set's best point (the sampled point with the lowest
  Ackley value: how many evaluations until it has been evaluated) -- median and per seed;
* the best value found after 10%, 25% and 50% of the evaluations (lower is better);
* for each acquisition, on how many seeds it beat FIFO (strictly) at 25%;
* the retrains applied (and how many evaluations after they were due), and wall time per run.

The goal (the issue): median evaluations to the set's best point at most 1/3 of FIFO's, and
better than FIFO at 25% on at least 9 seeds of 10.

    python benchmarks/ackley_quality.py --seeds 10 --points 750 --dims 4 --retrain-after 50 \\
        --acquisitions mean,ucb,ei --out out/quality

Progress goes to stderr with a readable table at the end; stdout gets one JSON line. PNGs go to
``--out``: best_so_far.png (mean +- 1 sd over seeds, retrains marked) and evals_to_best.png.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from scipy.stats import spearmanr

from eqflow.config import WorkflowConfig, load_workflow_config
from eqflow.db.migrate import upgrade
from eqflow.db.resolve import resolve_url
from eqflow.queue import LocalTaskQueue
from eqflow.workflows import gpr
from eqflow.workflows.ackley_gpr import AckleyGPR, Run, sample_points
from eqflow.workflows.quality_plots import MethodRuns, plot_best_so_far, plot_evals_to_best, plot_predicted_vs_actual

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.10, 0.25, 0.50)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    p.add_argument("--points", type=int, default=750, help="sample set size, all evaluated (default 750)")
    p.add_argument("--dims", type=int, default=4, help="dimensions (default 4)")
    p.add_argument("--retrain-after", type=int, default=50, help="results between retrains (default 50)")
    p.add_argument("--acquisitions", default="mean,ucb,ei", help="comma-separated: mean, ucb, ei")
    p.add_argument("--no-fifo", action="store_true", help="skip the FIFO baseline")
    p.add_argument("--workers", type=int, default=2, help="workers of the one Ackley pool (default 2)")
    p.add_argument("--runtime", type=float, default=0.01,
                   help="median seconds per Ackley task, lognormal (default 0.01; 0: no sleep)")
    p.add_argument("--runtime-var", type=float, default=0.5, help="sigma of the lognormal sleep (default 0.5)")
    p.add_argument("--config", default=str(ROOT / "cfgs" / "local.yaml"), help="base workflow config")
    p.add_argument("--db-url", default=None, help="PostgreSQL URL (default: the configured/embedded one); "
                                                  "an eqflow_quality database is made next to it")
    p.add_argument("--out", default="out/quality", help="folder for the PNGs (default out/quality)")
    args = p.parse_args(argv)
    args.acquisitions = [a.strip() for a in args.acquisitions.split(",") if a.strip()]
    bad = [a for a in args.acquisitions if a not in ("mean", "ucb", "ei")]
    if bad:
        p.error(f"--acquisitions: unknown {', '.join(bad)} (expected mean, ucb, ei)")
    return args


def seed_config(base: WorkflowConfig, args: argparse.Namespace, seed: int, acquisition: str,
                outputs: Path) -> WorkflowConfig:
    pool_name = base.tasks["ackley"].pools[0]
    pools = dict(base.pools)
    pools[pool_name] = pools[pool_name].model_copy(update={"workers": args.workers,
                                                           "batch_size": min(pools[pool_name].batch_size or 1,
                                                                             args.workers)})
    return base.model_copy(update={
        "seed": seed, "search_space_size": args.points, "sample_dimensions": args.dims,
        "num_guesses": args.points, "retrain_after": args.retrain_after, "runtime": args.runtime,
        "runtime_var": args.runtime_var, "acquisition": acquisition, "reprioritize_endpoint": "local",
        "output_dir": str(outputs), "extra_pools_after_retrain": [], "pools": pools})


def quality_database(url: str | None, name: str = "eqflow_quality") -> str:
    """A migrated database of this benchmark's own next to the configured one (like
    ``bench_database``, but not ``eqflow_bench``: the other benchmarks truncate that one when
    they start, which would pull the tasks from under a run here). Runs are told apart by
    experiment id, so nothing is truncated."""
    base = resolve_url(url, migrate=False)
    with psycopg.connect(base, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db_url = psycopg.conninfo.make_conninfo(base, dbname=name)
    upgrade(db_url)
    return db_url


def set_best_index(cfg: WorkflowConfig) -> tuple[int, float]:
    """The sample set's best point (index, value), computed here with the pool's own task function."""
    module, name = (cfg.pools[cfg.tasks["ackley"].pools[0]].fn or "eqflow.workers.tasks:ackley").split(":")
    task = getattr(importlib.import_module(module), name)  # the function the pool runs
    values = [float(json.loads(task(json.dumps({"x": p.tolist()})))["y"]) for p in sample_points(cfg)]
    best = min(range(len(values)), key=values.__getitem__)
    return best, values[best]


def first_retrain_check(cfg: WorkflowConfig, out: Path | None) -> dict[str, Any]:
    """The surrogate alone, without the engine's timing: fit ``gpr.fit`` on the first
    ``retrain_after`` points in sample order (what FIFO evaluates first), score the rest as the
    first retrain would, and say where the set's best point lands in that order (1: first).
    With ``out``, plot predicted against actual."""
    module, name = (cfg.pools[cfg.tasks["ackley"].pools[0]].fn or "eqflow.workers.tasks:ackley").split(":")
    task = getattr(importlib.import_module(module), name)
    x = sample_points(cfg)
    y = np.array([float(json.loads(task(json.dumps({"x": p.tolist()})))["y"]) for p in x])
    best = int(np.argmin(y))
    n = cfg.retrain_after
    train = [i for i in range(min(n + 1, len(x))) if i != best][:n]
    rest = np.setdiff1d(np.arange(len(x)), train)
    t0 = time.perf_counter()
    model = gpr.fit(x[train], y[train], cfg.seed)
    fit_s = time.perf_counter() - t0
    ranks: dict[str, int] = {}
    for acq in ("mean", "ucb", "ei"):
        score = gpr.scores(model, x[rest], acq, float(y[train].min()))
        ranks[acq] = int((score > score[int(np.searchsorted(rest, best))]).sum()) + 1
    mu = model.predict(x[rest])
    if out is not None:
        plot_predicted_vs_actual(mu, y[rest], out, f"seed {cfg.seed}: GP after the first {n} results, predicting "
                                 f"the other {len(rest)}\nthe set's best point ranks {ranks['mean']} by mean, "
                                 f"{ranks['ei']} by ei\n{model.kernel_}",
                                 highlight=int(np.searchsorted(rest, best)))
    return {"set_best_rank": ranks, "spearman": round(float(spearmanr(mu, y[rest]).statistic), 3),
            "fit_ms": round(fit_s * 1000, 1), "kernel": str(model.kernel_)}


def curve(run: Run) -> list[float]:
    out, best = [], math.inf
    for i in run.order:
        best = min(best, run.values[i])
        out.append(best)
    return out


def measure(run: Run, best_index: int, points: int) -> dict[str, Any]:
    position = run.order.index(best_index) + 1 if best_index in run.values else None
    return {"evals": len(run.order), "evals_to_best": position,
            "best_after": {f"{int(f * 100)}%": round(run.best_after(max(1, int(f * points))), 4) for f in FRACTIONS}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = load_workflow_config(args.config)
    methods = (["fifo"] if not args.no_fifo else []) + args.acquisitions
    queue = LocalTaskQueue(quality_database(args.db_url), migrate=False)
    outputs = Path(tempfile.mkdtemp(prefix="eqflow-quality-"))
    tag = uuid.uuid4().hex[:8]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    curves: dict[str, list[list[float]]] = {m: [] for m in methods}
    set_best: list[float] = []
    checks: list[dict[str, Any]] = []
    started = time.monotonic()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    log = (Path(args.out) / "runs.jsonl").open("w")  # each run as it ends, should this one be cut short
    try:
        for seed in range(args.seeds):
            best_index, best_value = set_best_index(seed_config(base, args, seed, "mean", outputs))
            set_best.append(best_value)
            checks.append(first_retrain_check(seed_config(base, args, seed, "mean", outputs),
                                              Path(args.out) if seed == 0 else None))
            for method in methods:
                cfg = seed_config(base, args, seed, "mean" if method == "fifo" else method, outputs)
                exp_id = f"quality-{tag}-{method}-s{seed}"
                t0 = time.monotonic()
                run = AckleyGPR(cfg, exp_id, queue, reprioritize=method != "fifo", progress=False).run()
                wall = time.monotonic() - t0
                row = measure(run, best_index, args.points)
                applied = [int(e.data.get("applied_at", e.data.get("points", 0)))
                           for e in queue.events(exp_id, kind="retrain")]
                row.update(seed=seed, wall_s=round(wall, 2), retrains=run.retrains, retrains_at=applied,
                           retrain_lag=[a - (k + 1) * args.retrain_after for k, a in enumerate(applied)])
                runs[method].append(row)
                curves[method].append(curve(run))
                log.write(json.dumps({"method": method, **row}) + "\n")
                log.flush()
                print(f"[quality] seed {seed + 1}/{args.seeds} {method:>4}: {row['evals']} evals, set's best "
                      f"({best_value:.3f}) at {row['evals_to_best']}, best after 25% "
                      f"{row['best_after']['25%']:.3f}, {run.retrains} retrains, {wall:.1f} s "
                      f"(total {time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    finally:
        queue.close()
        log.close()
    summary = summarize(runs, args)
    summary["first_retrain_alone"] = {
        "set_best_rank_median": {a: statistics.median(c["set_best_rank"][a] for c in checks)
                                 for a in ("mean", "ucb", "ei")},
        "spearman_mean": round(statistics.mean(c["spearman"] for c in checks), 3), "per_seed": checks}
    figures = draw(runs, curves, set_best, args)
    table(summary, methods)
    alone = summary["first_retrain_alone"]
    print(f"[quality] the surrogate alone, after the first {args.retrain_after} results: the set's best point "
          f"ranks {alone['set_best_rank_median']} (median) among the rest; Spearman(predicted, actual) "
          f"{alone['spearman_mean']}", file=sys.stderr)
    print(json.dumps({"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
                      "seeds": args.seeds, "points": args.points, "dims": args.dims,
                      "retrain_after": args.retrain_after, "workers": args.workers, "runtime": args.runtime,
                      "set_best": [round(v, 4) for v in set_best], "summary": summary,
                      "figures": [str(f) for f in figures], "runs": runs}))
    return 0


def summarize(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fifo = runs.get("fifo")
    for method, rows in runs.items():
        reached = [r["evals_to_best"] for r in rows if r["evals_to_best"] is not None]
        s: dict[str, Any] = {
            "median_evals_to_best": statistics.median(reached) if reached else None,
            "evals_to_best": [r["evals_to_best"] for r in rows],
            "best_after_mean": {k: round(statistics.mean(r["best_after"][k] for r in rows), 3)
                                for k in rows[0]["best_after"]},
            "wall_s_mean": round(statistics.mean(r["wall_s"] for r in rows), 2),
            "wall_s_median": round(statistics.median(r["wall_s"] for r in rows), 2),
            "wall_s_max": round(max(r["wall_s"] for r in rows), 2),
        }
        if method != "fifo":
            lags = [lag for r in rows for lag in r["retrain_lag"]]
            s["retrain_lag_mean"] = round(statistics.mean(lags), 1) if lags else None
        if fifo and method != "fifo":
            pairs = list(zip(rows, fifo, strict=True))
            s["better_at_25"] = sum(r["best_after"]["25%"] < f["best_after"]["25%"] for r, f in pairs)
            # FIFO already had the set's best point by 25%: nothing can be better, only as good
            s["fifo_had_set_best_at_25"] = sum(f["evals_to_best"] is not None
                                               and f["evals_to_best"] <= int(0.25 * args.points) for f in fifo)
            s["worse_at_25"] = sum(r["best_after"]["25%"] > f["best_after"]["25%"] for r, f in pairs)
            fifo_median = statistics.median([f["evals_to_best"] for f in fifo if f["evals_to_best"] is not None])
            s["median_vs_fifo"] = (round(s["median_evals_to_best"] / fifo_median, 3)
                                   if s["median_evals_to_best"] is not None else None)
            # the goal, as written: median <= 1/3 of FIFO's, better at 25% on >= 9 of 10
            s["goal_met"] = (s["median_vs_fifo"] is not None and s["median_vs_fifo"] <= 1 / 3
                             and s["better_at_25"] >= math.ceil(0.9 * len(rows)))
            # where FIFO already holds the set's best at 25%, a tie is the best anything can do:
            # the goal over the seeds where being better was possible, and never worse
            beatable = len(rows) - s["fifo_had_set_best_at_25"]
            s["goal_met_where_attainable"] = (s["median_vs_fifo"] is not None and s["median_vs_fifo"] <= 1 / 3
                                              and s["better_at_25"] >= math.ceil(0.9 * beatable)
                                              and s["worse_at_25"] == 0)
        out[method] = s
    return out


def draw(runs: dict[str, list[dict[str, Any]]], curves: dict[str, list[list[float]]], set_best: list[float],
         args: argparse.Namespace) -> list[Path]:
    out = Path(args.out)
    labels = {"fifo": "FIFO", "mean": "GPR mean", "ucb": "GPR ucb", "ei": "GPR ei"}
    methods = [MethodRuns(labels[m], curves[m], [r["evals_to_best"] for r in rows],
                          [r["retrains_at"] for r in rows]) for m, rows in runs.items()]
    sizes = f"{args.points} points, {args.dims}-d, retrain every {args.retrain_after}, {args.seeds} seeds"
    return [plot_best_so_far(methods, out, f"Ackley: best so far, mean ± 1 sd over seeds ({sizes})",
                             set_best=set_best, retrain_after=args.retrain_after),
            plot_evals_to_best(methods, out, f"Evaluations to the set's best point ({sizes})")]


def table(summary: dict[str, Any], methods: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Ackley quality (lower is better)")
    for col in ("method", "median evals to set's best (vs FIFO)", "best @10%", "best @25%", "best @50%",
                "better / tied / worse than FIFO @25%", "retrain lag (evals)", "wall s/run (median, max)", "goal"):
        t.add_column(col, justify="right")
    for m in methods:
        s = summary[m]
        b = s["best_after_mean"]
        ratio = f" ({s['median_vs_fifo']:.2f})" if s.get("median_vs_fifo") is not None else ""
        t.add_row(m, f"{s['median_evals_to_best']}{ratio}", f"{b['10%']:.3f}", f"{b['25%']:.3f}", f"{b['50%']:.3f}",
                  "" if m == "fifo" else f"{s.get('better_at_25', '-')} / "
                  f"{len(s['evals_to_best']) - s.get('better_at_25', 0) - s.get('worse_at_25', 0)} / "
                  f"{s.get('worse_at_25', '-')}",
                  "" if m == "fifo" else str(s.get("retrain_lag_mean")),
                  f"{s['wall_s_median']:.1f}, {s['wall_s_max']:.1f}",
                  "" if "goal_met" not in s else ("met" if s["goal_met"] else
                                                  f"met where attainable ({s['better_at_25']} of "
                                                  f"{len(s['evals_to_best']) - s['fifo_had_set_best_at_25']} "
                                                  "beatable)" if s["goal_met_where_attainable"] else "not met"))
    Console(stderr=True, width=180).print(t)


if __name__ == "__main__":
    raise SystemExit(main())
