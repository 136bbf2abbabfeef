"""eqflow's Ackley/GPR model exploration.

    python run.py <exp_id> cfgs/local.yaml [--fifo-baseline] [--dynamic-scaling]

Samples points, evaluates them as Ackley tasks on worker pools, retrains a Gaussian-process
surrogate every `retrain_after` results and reprioritizes every queued point by it, adding
pools as it goes. Running again with an existing exp_id re-attaches and continues. Outputs
(tasks.csv, summary.json, best_so_far.png, queue_and_pools.png) go to <output_dir>/<exp_id>/.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from eqflow.config import load_workflow_config
from eqflow.errors import ConfigError, EqflowError
from eqflow.task_queues import make_task_queue
from eqflow.workflows.ackley_gpr import AckleyGPR
from eqflow.workflows.plots import plot_best, plot_trace


def open_queue(cfg, name: str):  # type: ignore[no-untyped-def]
    entry = dict(cfg.task_queues[name])
    if entry.get("type") == "local" and entry.get("db") in cfg.dbs:
        entry["db"] = cfg.db_url(entry["db"])  # a dbs: name -> its URL (None: embedded)
    return make_task_queue(name, entry)


def run_db_commands(cfg, which: str) -> None:  # type: ignore[no-untyped-def]
    """dbs.<name>.start / .stop: shell commands (with ${var} already substituted)."""
    import subprocess

    for name, db in cfg.dbs.items():
        command = getattr(db, which)
        if command:
            proc = subprocess.run(command, shell=True, capture_output=True, text=True)
            if proc.returncode != 0:
                raise ConfigError(f"dbs.{name}.{which} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp_id", help="experiment id; an existing one is resumed")
    parser.add_argument("config", type=Path, help="YAML config, e.g. cfgs/local.yaml")
    parser.add_argument("--fifo-baseline", action="store_true",
                        help="also run the same points in plain FIFO order (<exp_id>-fifo) and plot both")
    scaling = parser.add_mutually_exclusive_group()
    scaling.add_argument("--dynamic-scaling", dest="dynamic", action="store_true", default=None,
                         help="start/stop pools from queue depth and free resources (scaling: in the config)")
    scaling.add_argument("--no-dynamic-scaling", dest="dynamic", action="store_false",
                         help="pools on the fixed schedule (extra_pools_after_retrain)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_workflow_config(args.config)
        run_db_commands(cfg, "start")
        queue = open_queue(cfg, cfg.tasks["ackley"].queue)
    except ConfigError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    try:
        run = AckleyGPR(cfg, args.exp_id, queue, dynamic_scaling=args.dynamic, progress=not args.no_progress).run()
        curves = {"reprioritized": [run.values[i] for i in run.order]}
        if args.fifo_baseline:
            fifo = AckleyGPR(cfg, f"{args.exp_id}-fifo", queue, reprioritize=False,
                             progress=not args.no_progress).run()
            curves["FIFO"] = [fifo.values[i] for i in fifo.order]
        out = Path(cfg.output_dir) / args.exp_id
        plot_best(out, curves)
        plot_trace(out, run.trace)
    except EqflowError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 1
    finally:
        queue.close()
        run_db_commands(cfg, "stop")
    summary = json.loads((out / "summary.json").read_text())
    print(json.dumps({**summary, "output": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
