"""eqflow demo ME: submit Ackley tasks, run a local pool, gather results as they complete.

    python run.py <exp_id> cfgs/local.yaml

Running it again with the same exp_id re-attaches to that experiment's tasks instead of
submitting new ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from eqflow import LocalTaskQueue, TaskStatus
from eqflow.errors import ConfigError

REQUIRED = {"task_type": int, "n_tasks": int, "sample_dimensions": int, "pool": dict}


def load_config(path: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for key, kind in REQUIRED.items():
        if not isinstance(cfg.get(key), kind):
            raise ConfigError(f"{path}: key {key!r} must be a {kind.__name__}, got {cfg.get(key)!r}")
    return cfg


def start_pool(queue: LocalTaskQueue, cfg: dict[str, Any], exp_id: str) -> subprocess.Popen[bytes]:
    pool = cfg["pool"]
    cmd = [sys.executable, "-m", "eqflow.workers.pool", "--types", str(cfg["task_type"]),
           "--fn", pool.get("fn", "eqflow.workers.tasks:ackley"), "--name", f"{exp_id}-pool",
           "--workers", str(pool.get("workers", 1)), "--batch-size", str(pool.get("batch_size", 0))]
    env = dict(os.environ, EQFLOW_DB_URL=queue.url)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp_id", help="experiment id; an existing one is resumed")
    parser.add_argument("config", type=Path, help="YAML config, e.g. cfgs/local.yaml")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the sample points")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2

    queue = LocalTaskQueue(cfg.get("db_url"))
    futures = queue.experiment_futures(args.exp_id)
    if futures:
        print(f"re-attached to {args.exp_id}: {len(futures)} tasks")
    else:
        queue.create_experiment(args.exp_id, cfg)
        rng = random.Random(args.seed)
        points = [[rng.uniform(-32.768, 32.768) for _ in range(cfg["sample_dimensions"])]
                  for _ in range(cfg["n_tasks"])]
        futures = queue.submit_many(args.exp_id, cfg["task_type"],
                                    [json.dumps({"x": p, "delay": cfg.get("delay", 0.0)}) for p in points])
    pending = [f for f in futures if not f.done()]
    pool = start_pool(queue, cfg, args.exp_id) if pending else None
    best = float("inf")
    failed = 0
    try:
        with tqdm(total=len(futures), desc=args.exp_id, unit="task") as bar:
            for fut in queue.as_completed(futures, timeout=600):
                if fut.status is TaskStatus.COMPLETE:
                    best = min(best, json.loads(fut.result())["y"])
                else:
                    failed += 1
                bar.set_postfix(best=f"{best:.4f}", failed=failed)
                bar.update()
    finally:
        if pool is not None:
            pool.terminate()  # SIGTERM: the pool returns any unfinished task to the queue
            pool.wait(timeout=30)
    print(json.dumps({"exp_id": args.exp_id, "tasks": len(futures), "failed": failed, "best": best}))
    queue.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
