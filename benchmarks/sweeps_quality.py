"""Do eqflow's sweeps pay? Two measurements on the real system (real PostgreSQL, real pools).

1. ASHA quality. A synthetic train function with known learning curves, two families:
   ``readme``: slurm_sweeps' README example, loss = (p - 1)^2 / (epoch + 1), p ~ U(0, 2);
   ``crossing``: loss = plateau(x) + a * exp(-epoch / tau(x)) + noise, x ~ U(0, 1), where the
   configs with the best plateau learn slowest, so curves cross, and noise (sd 0.01) blurs close
   ones. Per seed: 64 configs, 8 concurrent trials, ASHA(reduction_factor=4, min_t=1, max_t=50),
   the default (asynchronous) rule. Reported: ASHA's epochs as a share of the full grid's
   (64 x 50; goal <= 20 %), and the regret of its best config (its noiseless final loss minus the
   best of the 64, over the range of the 64's final losses; goal <= 5 % in >= 90 % of seeds),
   beside random search with the same budget (as many full trials as ASHA's epochs pay for, the
   best observed final loss chosen; its hit rate is the expectation over draws).

2. GPU slot use. 4 simulated GPUs x 2 slots (CUDA_VISIBLE_DEVICES=0,1,2,3), jobs of mixed
   lengths run by ``run_grid_searches``; utilisation = busy slot time / (8 x time) while at least 8
   jobs are ready (queued or running) (goal >= 95 %). Beside it, the reference's scheme on the
   same job lengths: each job is given a GPU round-robin and waits for a slot on that GPU while
   other GPUs may idle (simulated exactly, since it is a fixed assignment).

    python benchmarks/sweeps_quality.py --seeds 20 --out out/sweeps

Progress on stderr, a table at the end, one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import heapq
import io
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from eqflow.sweeps import (  # noqa: E402
    ASHA,
    Experiment,
    GPUJobResult,
    GridSearchConfig,
    Result,
    Uniform,
    log,
    pydraclass,
    run_grid_searches,
)
from eqflow.sweeps.experiment import TRIAL_FN, TRIAL_TASK_TYPE  # noqa: E402
from eqflow.sweeps.pools import SweepPools  # noqa: E402
from eqflow.workers.launchers import PoolSpec  # noqa: E402

MAX_T = 50
N_CONFIGS = 64
CONCURRENT = 8
NOISE_SD = 0.01


# -- the synthetic learning curves -----------------------------------------------------------
def curve(family: str, x: float, epoch: int) -> float:
    """The noiseless loss after ``epoch`` (0-based)."""
    if family == "readme":
        return (x - 1) ** 2 / (epoch + 1)
    plateau = 0.5 * (x - 0.7) ** 2
    tau = 1.0 + 8.0 * x  # the best plateaus are reached slowest: curves cross
    return plateau + 0.3 * math.exp(-epoch / tau)


def noise(key: str, epoch: int) -> float:
    return random.Random(f"{key}/{epoch}").gauss(0.0, NOISE_SD)


def train(cfg: dict[str, Any]) -> None:
    for epoch in range(MAX_T):
        time.sleep(cfg["epoch_s"])
        value = curve(cfg["family"], cfg["x"], epoch)
        if cfg["family"] == "crossing":
            value += noise(f"{cfg['seed']}/{cfg['x']}", epoch)
        log({"loss": value}, epoch)


# -- ASHA quality ------------------------------------------------------------------------------
def asha_run(family: str, seed: int, local_dir: Path, db_url: str | None, epoch_s: float) -> dict[str, Any]:
    lo, hi = (0.0, 2.0) if family == "readme" else (0.0, 1.0)
    cfg = {"family": family, "x": Uniform(lo, hi), "seed": seed, "epoch_s": epoch_s}
    name = f"{family}-{seed}"
    exp = Experiment(train, cfg, name=name, local_dir=local_dir, asha=ASHA("loss", "min"), overwrite=True,
                     db_url=db_url, seed=seed, start_pools=False, stream=io.StringIO())
    started = time.monotonic()
    exp.run(n_trials=N_CONFIGS, max_concurrent_trials=CONCURRENT, summary_interval_in_sec=60.0)
    wall = time.monotonic() - started
    exp.close()
    trials = Result(name, local_dir, db_url=db_url).trials
    epochs = sum(len(t.metrics.get("loss", [])) for t in trials)
    finals = {t.trial_id: curve(family, t.cfg["x"], MAX_T - 1) for t in trials}
    best_true, worst_true = min(finals.values()), max(finals.values())
    span = worst_true - best_true
    deepest = max(len(t.metrics.get("loss", [])) for t in trials)
    candidates = [t for t in trials if len(t.metrics.get("loss", [])) == deepest]
    chosen = min(candidates, key=lambda t: t.metrics["loss"][-1])
    regret = (finals[chosen.trial_id] - best_true) / span
    # random search, same budget: k full trials, the best observed final loss wins
    k = max(1, epochs // MAX_T)
    observed = {t.trial_id: finals[t.trial_id] + (noise(f"{seed}/{t.cfg['x']}", MAX_T - 1)
                                                 if family == "crossing" else 0.0) for t in trials}
    rng = random.Random(seed)
    ids = list(finals)
    draws = 400
    rs_regrets = []
    for _ in range(draws):
        pick = min(rng.sample(ids, min(k, len(ids))), key=observed.__getitem__)
        rs_regrets.append((finals[pick] - best_true) / span)
    statuses = [t.status.value for t in trials]
    return {"family": family, "seed": seed, "epochs": epochs, "share": epochs / (N_CONFIGS * MAX_T),
            "regret": regret, "hit": regret <= 0.05, "random_k": k,
            "random_hit_rate": sum(r <= 0.05 for r in rs_regrets) / draws,
            "random_regret_median": statistics.median(rs_regrets),
            "completed": statuses.count("completed"), "pruned": statuses.count("pruned"),
            "failed": statuses.count("failed"), "wall_s": wall}


# -- GPU slots ---------------------------------------------------------------------------------
@pydraclass
class SleepJob(GridSearchConfig):
    def get_experiment_config_and_base_dir(self, **props: Any) -> tuple[dict[str, Any], str]:
        return dict(props), f"{self.base_dir}/job{props['job']}"

    def run_experiment_config(self, config: dict[str, Any]) -> tuple[float, float, int]:
        start = time.time()
        time.sleep(config["seconds"])
        return start, time.time(), os.getpid()

    def agg_results(self, results: list[GPUJobResult]) -> list[Any]:
        return [r.result for r in results]


def job_lengths(n: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.choice([0.2, 0.3, 0.5, 1.5, 2.5]) for _ in range(n)]


def utilisation(spans: list[tuple[float, float]], slots: int, start: float) -> float:
    """Busy slot time / (slots x time) from ``start`` while at least ``slots`` jobs are ready."""
    ends = sorted(e for _, e in spans)
    window_end = ends[len(ends) - slots] if len(ends) >= slots else ends[-1]  # fewer than `slots` left after
    busy = sum(max(0.0, min(e, window_end) - max(s, start)) for s, e in spans)
    return busy / (slots * (window_end - start))


def round_robin(lengths: list[float], gpus: int, per_gpu: int) -> list[tuple[float, float]]:
    """The reference's scheme: job i goes to GPU i mod gpus and waits for one of its slots."""
    free = [[0.0] * per_gpu for _ in range(gpus)]
    spans = []
    for i, length in enumerate(lengths):
        slots = free[i % gpus]
        start = heapq.heappop(slots)
        heapq.heappush(slots, start + length)
        spans.append((start, start + length))
    return spans


def slot_run(n_jobs: int, out: Path, db_url: str | None) -> dict[str, Any]:
    lengths = job_lengths(n_jobs)
    os.environ["CUDA_VISIBLE_DEVICES"] = "0,1,2,3"
    grid = SleepJob(base_dir=str(out / "slots"), sweep_props={"job": list(range(n_jobs)), "seconds": [0.0]})
    searches = [SleepJob(base_dir=str(out / "slots" / f"j{i}"), sweep_props={"job": [i], "seconds": [s]})
                for i, s in enumerate(lengths)]
    del grid
    results = run_grid_searches(searches, max_gpus=4, simultaneous_jobs_per_gpu=2, db_url=db_url, resume=False)
    runs = [r[0] for r in results]
    spans = [(s, e) for s, e, _ in runs]
    first = min(s for s, _ in spans)
    # Utilisation counts from the moment all 8 worker processes are up (each has begun its first
    # job): starting them is a one-off cost of a pool, reported beside it, not a scheduling one.
    warm = max(min(s for s, _, pid in runs if pid == p) for p in {pid for *_, pid in runs})
    rr = round_robin(lengths, 4, 2)
    return {"jobs": n_jobs, "work_s": sum(lengths), "ours_utilisation": utilisation(spans, 8, warm),
            "workers_warm_after_s": warm - first, "workers": len({pid for *_, pid in runs}),
            "ours_utilisation_from_first_job": utilisation(spans, 8, first),
            "ours_makespan_s": max(e for _, e in spans) - first,
            "round_robin_utilisation": utilisation(rr, 8, 0.0), "round_robin_makespan_s": max(e for _, e in rr),
            "ideal_makespan_s": sum(lengths) / 8}


# -- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=20, help="seeds per family (default 20)")
    p.add_argument("--families", default="readme,crossing")
    p.add_argument("--epoch-s", type=float, default=0.004, help="simulated seconds per epoch (default 0.004)")
    p.add_argument("--slot-jobs", type=int, default=64, help="jobs in the slot measurement (0: skip it)")
    p.add_argument("--db-url", default=None, help="database (default $EQFLOW_DB_URL or the embedded cluster)")
    p.add_argument("--out", default="out/sweeps", help="folder for the experiments' files and the JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    local_dir = Path(tempfile.mkdtemp(prefix="asha-", dir=out))
    from eqflow.db.resolve import resolve_url

    db_url = resolve_url(args.db_url)
    pools = SweepPools(db_url, log_dir=out / "pool-logs")
    pools.start(PoolSpec([TRIAL_TASK_TYPE], fn=TRIAL_FN, name="bench-trials", workers=CONCURRENT))
    runs = []
    try:
        for family in args.families.split(","):
            for seed in range(args.seeds):
                run = asha_run(family, seed, local_dir, db_url, args.epoch_s)
                runs.append(run)
                print(f"[asha] {family} seed {seed}: epochs {run['share']:.1%} of the grid, regret "
                      f"{run['regret']:.3f}, random search hit rate {run['random_hit_rate']:.0%} "
                      f"({run['completed']} completed, {run['pruned']} pruned, {run['wall_s']:.1f}s)",
                      file=sys.stderr, flush=True)
    finally:
        pools.stop()
    summary: dict[str, Any] = {"asha": {}}
    for family in args.families.split(","):
        mine = [r for r in runs if r["family"] == family]
        if not mine:
            continue
        summary["asha"][family] = {
            "seeds": len(mine), "epoch_share_mean": statistics.mean(r["share"] for r in mine),
            "epoch_share_max": max(r["share"] for r in mine),
            "regret_median": statistics.median(r["regret"] for r in mine),
            "hit_rate": sum(r["hit"] for r in mine) / len(mine),
            "random_same_budget_hit_rate": statistics.mean(r["random_hit_rate"] for r in mine),
            "random_same_budget_regret_median": statistics.median(r["random_regret_median"] for r in mine),
            "random_trials_median": statistics.median(r["random_k"] for r in mine)}
    if args.slot_jobs:
        summary["slots"] = slot_run(args.slot_jobs, out, db_url)
    summary["runs"] = runs
    (out / "sweeps_quality.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["", "family     epochs/grid (mean, max)  hit rate (regret<=5%)  median regret  "
                 "random search: hit rate, median regret (trials)"]
    for family, s in summary["asha"].items():
        lines.append(f"{family:10} {s['epoch_share_mean']:6.1%} {s['epoch_share_max']:6.1%}           "
                     f"{s['hit_rate']:5.0%}                  {s['regret_median']:.4f}         "
                     f"{s['random_same_budget_hit_rate']:5.0%}, {s['random_same_budget_regret_median']:.4f} "
                     f"({s['random_trials_median']:.0f})")
    if "slots" in summary:
        s = summary["slots"]
        lines.append(f"slots: 4 GPUs x 2, {s['jobs']} jobs ({s['work_s']:.1f}s of work): utilisation while >= 8 "
                     f"ready {s['ours_utilisation']:.1%} once the {s['workers']} workers are up "
                     f"({s['workers_warm_after_s']:.2f}s after the first job; "
                     f"{s['ours_utilisation_from_first_job']:.1%} counting that) "
                     f"(makespan {s['ours_makespan_s']:.2f}s); round-robin "
                     f"{s['round_robin_utilisation']:.1%} (makespan {s['round_robin_makespan_s']:.2f}s); "
                     f"ideal makespan {s['ideal_makespan_s']:.2f}s")
    print("\n".join(lines), file=sys.stderr)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
