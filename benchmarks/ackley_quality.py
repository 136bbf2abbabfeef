"""Does reprioritization pay? The Ackley/GPR workflow with GP reprioritization and in plain
FIFO order, on the same points, over several seeds; prints the best value found after 10%,
25% and 50% of the evaluations for each (lower is better), as one JSON line.

    python benchmarks/ackley_quality.py [--seeds 5] [--points 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from eqflow.bench.queue_bench import bench_database
from eqflow.config import load_workflow_config
from eqflow.queue import LocalTaskQueue
from eqflow.workflows.ackley_gpr import AckleyGPR

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.10, 0.25, 0.50)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--points", type=int, default=300)
    parser.add_argument("--retrain-after", type=int, default=20)
    parser.add_argument("--acquisition", default="mean", choices=["mean", "ucb", "ei"])
    args = parser.parse_args(argv)
    base = load_workflow_config(ROOT / "cfgs" / "local.yaml")
    queue = LocalTaskQueue(bench_database(None), migrate=False)
    out = Path(tempfile.mkdtemp(prefix="eqflow-quality-"))
    table: dict[str, dict[str, list[float]]] = {"gpr": {}, "fifo": {}}
    try:
        for seed in range(args.seeds):
            cfg = base.model_copy(update={
                "seed": seed, "search_space_size": args.points, "num_guesses": args.points,
                "retrain_after": args.retrain_after, "runtime": 0.002, "runtime_var": 0.5,
                "acquisition": args.acquisition, "output_dir": str(out), "extra_pools_after_retrain": []})
            for label, reprioritize in (("gpr", True), ("fifo", False)):
                print(f"[quality] seed {seed} {label}", file=sys.stderr)
                run = AckleyGPR(cfg, f"quality-{label}-{seed}-{out.name}", queue, reprioritize=reprioritize,
                                progress=False).run()
                for frac in FRACTIONS:
                    n = max(1, int(frac * len(run.order)))
                    table[label].setdefault(f"{int(frac * 100)}%", []).append(round(run.best_after(n), 3))
    finally:
        queue.close()
    summary = {label: {k: {"mean": round(statistics.mean(v), 3), "per_seed": v} for k, v in rows.items()}
               for label, rows in table.items()}
    print(json.dumps({"seeds": args.seeds, "points": args.points, "retrain_after": args.retrain_after,
                      "acquisition": args.acquisition, "best_after": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
