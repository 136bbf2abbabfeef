"""`eqflow pool start|status|stop|list` (and `eqflow pool run`, the runtime itself)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from eqflow.models import StopMode
from eqflow.workers.launchers import JobSpec, Launcher, LocalLauncher, PbsLauncher, PoolSpec, SlurmLauncher


def _launcher(args: argparse.Namespace) -> Launcher:
    if args.launcher == "local":
        return LocalLauncher(log_dir=args.output_dir)
    job = JobSpec(nodes=args.nodes, ppn=args.ppn, walltime=args.walltime, queue=args.queue, project=args.project,
                  job_name=args.job_name, output_dir=args.output_dir, setup=args.setup or [])
    return SlurmLauncher(job) if args.launcher == "slurm" else PbsLauncher(job)


def _add_launcher_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--launcher", choices=["local", "slurm", "pbs"], default="local")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--ppn", type=int, default=1, help="processes (cores) per node")
    p.add_argument("--walltime", default="01:00:00")
    p.add_argument("--queue", default=None, help="SLURM partition / PBS queue")
    p.add_argument("--project", default=None, help="SLURM account / PBS project")
    p.add_argument("--job-name", default="eqflow-pool")
    p.add_argument("--output-dir", default=".", help="where job scripts and logs go")
    p.add_argument("--setup", action="append", help="a line run before the pool (e.g. 'module load python')")


def _start(args: argparse.Namespace) -> int:
    pool = PoolSpec(args.types, fn=args.fn, cmd=args.cmd, name=args.name, workers=args.workers,
                    batch_size=args.batch_size, threshold=args.threshold, threads=args.threads,
                    timeout=args.timeout, mem_limit_mb=args.mem_limit_mb, gpu=args.gpu,
                    workers_per_gpu=args.workers_per_gpu, idle_exit=args.idle_exit, db_url=args.db)
    print(json.dumps({"launcher": args.launcher, "job_id": _launcher(args).start(pool)}))
    return 0


def _status(args: argparse.Namespace) -> int:
    print(json.dumps({"job_id": args.job_id, "state": _launcher(args).status(args.job_id).value}))
    return 0


def _stop(args: argparse.Namespace) -> int:
    if args.job_id:
        _launcher(args).cancel(args.job_id)
        print(json.dumps({"canceled": args.job_id}))
        return 0
    if args.type is None:
        print("eqflow pool stop: give --type T (stop request) or --job-id ID (cancel the job)", file=sys.stderr)
        return 2
    from eqflow.queue import LocalTaskQueue

    with LocalTaskQueue(args.db, create_db=False) as queue:
        names = queue.stop_pools(args.type, StopMode.NOW if args.now else StopMode.DRAIN)
    print(json.dumps({"stop_requested": names, "mode": "now" if args.now else "drain"}))
    return 0


def _list(args: argparse.Namespace) -> int:
    from eqflow.queue import LocalTaskQueue

    with LocalTaskQueue(args.db, create_db=False) as queue:
        pools = queue.pools(active_only=not args.all)
        decisions = queue.db.fetch_all("recent_decisions", {"limit": args.decisions})
    rows: list[dict[str, Any]] = [
        {"pool": f"{p.name}-{p.pool_id}", "types": p.task_types, "status": p.status, "launcher": p.launcher,
         "host": p.host, "pid": p.pid, "job_id": p.job_id, "workers": p.n_workers,
         "stop_requested": p.stop_requested.value if p.stop_requested else None,
         "heartbeat_at": p.heartbeat_at.isoformat()} for p in pools]
    if args.json:
        print(json.dumps({"pools": rows, "decisions": [
            {"at": d[0].isoformat(), "task_type": d[1], "action": d[2], "reason": d[3], "job_id": d[6]}
            for d in decisions]}))
        return 0
    print(f"{'pool':<24}{'types':<12}{'status':<10}{'launcher':<10}{'job/pid':<12}{'workers':<8}heartbeat")
    for r in rows:
        print(f"{r['pool']:<24}{str(r['types']):<12}{r['status']:<10}{r['launcher']:<10}"
              f"{str(r['job_id'] or r['pid']):<12}{r['workers']:<8}{r['heartbeat_at'][:19]}")
    if decisions:
        print("\nscaling decisions (newest first):")
        for at, task_type, action, reason, _, _, job_id in decisions:
            print(f"  {at:%H:%M:%S} type {task_type}: {action:<5} {reason}" + (f" [{job_id}]" if job_id else ""))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"]:
        from eqflow.workers.pool import main as run_main

        return run_main(argv[1:])
    parser = argparse.ArgumentParser(prog="eqflow pool", description="start, watch and stop worker pools")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("run", help="run a pool in this process (see eqflow pool run --help)")

    start = sub.add_parser("start", help="launch a pool (local process, SLURM or PBS job); prints its job id")
    _add_launcher_args(start)
    start.add_argument("--types", type=int, nargs="+", required=True)
    what = start.add_mutually_exclusive_group(required=True)
    what.add_argument("--fn")
    what.add_argument("--cmd")
    start.add_argument("--name", default="pool")
    start.add_argument("--workers", type=int, default=None)
    start.add_argument("--batch-size", type=int, default=0)
    start.add_argument("--threshold", type=int, default=1)
    start.add_argument("--threads", action="store_true")
    start.add_argument("--timeout", type=float, default=None)
    start.add_argument("--mem-limit-mb", type=int, default=None)
    start.add_argument("--gpu", action="store_true")
    start.add_argument("--workers-per-gpu", type=int, default=1)
    start.add_argument("--idle-exit", type=float, default=None)
    start.add_argument("--db", default=None)
    start.set_defaults(func=_start)

    status = sub.add_parser("status", help="a launched pool job's state")
    _add_launcher_args(status)
    status.add_argument("job_id")
    status.set_defaults(func=_status)

    stop = sub.add_parser("stop", help="ask the pools of a type to stop, or cancel one job")
    _add_launcher_args(stop)
    stop.add_argument("--type", type=int, default=None)
    stop.add_argument("--now", action="store_true", help="return unfinished tasks and exit (default: drain)")
    stop.add_argument("--job-id", default=None)
    stop.add_argument("--db", default=None)
    stop.set_defaults(func=_stop)

    listing = sub.add_parser("list", help="pools and recent scaling decisions")
    listing.add_argument("--all", action="store_true", help="include stopped pools")
    listing.add_argument("--decisions", type=int, default=10)
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--db", default=None)
    listing.set_defaults(func=_list)

    args = parser.parse_args(argv)
    return int(args.func(args))
