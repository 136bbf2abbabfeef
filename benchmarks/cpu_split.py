"""Where a task's CPU goes, end to end: the ME, the worker processes and the PostgreSQL backends.

Runs the end-to-end workload of ``eqflow bench queue`` (the ME submits N tasks and gathers them
with ``as_completed``; worker processes claim and report in batches) and reads each process's
CPU time (psutil) before and after: microseconds of user and system CPU per task, per kind of
process, beside the rate. On a machine whose cores are all busy, the rate is about
cores / (CPU per task).

    .venv/bin/python benchmarks/cpu_split.py --tasks 3000 --batch 1 --rounds 3

PostgreSQL's backends are found as the processes of the server's user whose command line names
the benchmark database (the embedded cluster's user is ``eqflow``; ``--pg-user`` for another).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import psutil

from eqflow.bench.queue_bench import _start_workers, _stop_workers, bench_database
from eqflow.queue import LocalTaskQueue

TASK_TYPE = 77


def _snapshot(me: int, workers: set[int], pg_user: str) -> dict[tuple[str, int], tuple[float, float]]:
    out = {}
    for proc in psutil.process_iter(["username", "cmdline"]):
        try:
            cpu = proc.cpu_times()
        except psutil.Error:
            continue
        if proc.pid == me:
            kind = "me"
        elif proc.pid in workers:
            kind = "workers"
        elif proc.info["username"] == pg_user and "eqflow_bench" in " ".join(proc.info["cmdline"] or []):
            kind = "postgres"
        else:
            continue
        out[(kind, proc.pid)] = (cpu.user, cpu.system)
    return out


def measure(url: str, tasks: int, workers: int, batch: int, pg_user: str) -> dict[str, Any]:
    queue = LocalTaskQueue(url, migrate=False)
    procs, stop = _start_workers(url, TASK_TYPE, workers, batch)
    try:
        time.sleep(1.0)  # the workers' first claims are waiting
        me = psutil.Process()
        kids = {c.pid for c in me.children(recursive=True)}
        before = _snapshot(me.pid, kids, pg_user)
        t0 = time.perf_counter()
        futures = queue.submit_many("cpu-split", TASK_TYPE, ["{}"] * tasks)
        done = sum(1 for _ in queue.as_completed(futures, timeout=600))
        elapsed = time.perf_counter() - t0
        after = _snapshot(me.pid, kids, pg_user)
    finally:
        _stop_workers(procs, stop)
        queue.close()
    assert done == tasks
    split: dict[str, list[float]] = {}
    for key, (user, system) in after.items():
        user0, system0 = before.get(key, (0.0, 0.0))
        totals = split.setdefault(key[0], [0.0, 0.0])
        totals[0] += user - user0
        totals[1] += system - system0
    per_task = {kind: {"user_us": round(1e6 * u / tasks), "system_us": round(1e6 * s / tasks)}
                for kind, (u, s) in sorted(split.items())}
    return {"tasks_per_s": round(tasks / elapsed), "cpu_us_per_task": per_task,
            "total_us_per_task": round(sum(1e6 * (u + s) / tasks for u, s in split.values()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="database URL (default: the embedded cluster)")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-user", default="eqflow", help="the user PostgreSQL's processes run as")
    args = parser.parse_args()
    url = bench_database(args.url)
    for _ in range(args.rounds):
        figures = measure(url, args.tasks, args.workers, args.batch, args.pg_user)
        print(json.dumps({"batch": args.batch, "workers": args.workers, "tasks": args.tasks, **figures}), flush=True)


if __name__ == "__main__":
    main()
