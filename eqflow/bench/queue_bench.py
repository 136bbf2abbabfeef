"""`eqflow bench queue`: the core queue's figures, printed as one JSON line.

Runs on a database of its own (``eqflow_bench``) in the embedded cluster, or on the server
named by ``--url``; every run starts from an empty task table.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import psycopg

from eqflow.db.migrate import upgrade
from eqflow.db.resolve import resolve_url
from eqflow.db.sqlfiles import query
from eqflow.queue import LocalTaskQueue

EXP = "bench"


def bench_database(url: str | None) -> str:
    """A fresh, migrated ``eqflow_bench`` database next to the configured one."""
    base = resolve_url(url, migrate=False)
    with psycopg.connect(base, autocommit=True) as conn:
        if not conn.execute(query("bench_database_exists")).fetchone():
            conn.execute(query("create_bench_database"))
    bench_url = psycopg.conninfo.make_conninfo(base, dbname="eqflow_bench")
    upgrade(bench_url)
    with psycopg.connect(bench_url, autocommit=True) as conn:
        conn.execute(query("bench_truncate"))
    return bench_url


def open_queue(target: str | tuple[str, str]) -> Any:
    """A database URL, or (service URL, token) for the EMEWS service."""
    if isinstance(target, tuple):
        from eqflow.service_queue import ServiceTaskQueue

        return ServiceTaskQueue(target[0], target[1])
    return LocalTaskQueue(target, migrate=False, pool_size=1)


def _drain(target: str | tuple[str, str], task_type: int, batch: int, stop: Any, ready: Any) -> None:
    queue = open_queue(target)
    pool = f"bench-{os.getpid()}"
    ready.release()
    combined = hasattr(queue, "report_and_claim")
    tasks: list[Any] = []
    while not stop.is_set():
        if not tasks:
            tasks = queue.claim(task_type, n=batch, pool=pool, timeout=0.5)
        elif combined:  # steady state: one statement (one commit) per batch
            _, tasks = queue.report_and_claim([(t, t.payload) for t in tasks], task_type, n=batch, pool=pool)
        else:
            queue.report([(t, t.payload) for t in tasks])
            tasks = []
    queue.close()


def _start_workers(url: Any, task_type: int, count: int, batch: int) -> tuple[list[Any], Any]:
    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Semaphore(0)
    procs = [ctx.Process(target=_drain, args=(url, task_type, batch, stop, ready), daemon=True)
             for _ in range(count)]
    for proc in procs:
        proc.start()
    for _ in procs:  # a worker that dies before it is ready (a failed import, say) fails the bench
        while not ready.acquire(timeout=1):
            if dead := [p.exitcode for p in procs if not p.is_alive()]:
                _stop_workers(procs, stop)
                raise RuntimeError(f"a benchmark worker exited before it was ready (exit codes {dead})")
    return procs, stop


def _stop_workers(procs: list[Any], stop: Any) -> None:
    stop.set()
    for proc in procs:
        proc.join(timeout=10)


def bench_submit(queue: LocalTaskQueue, n: int, repeats: int = 5) -> float:
    payloads = [json.dumps({"x": i}) for i in range(n)]
    best = float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        queue.submit_many(EXP, 900 + r, payloads)
        best = min(best, time.perf_counter() - t0)
    return n / best


def bench_end_to_end(queue: Any, n: int, workers: int, batch: int, target: Any = None,
                     task_type: int = 10) -> float:
    procs, stop = _start_workers(target or queue.url, task_type, workers, batch)
    try:
        payloads = ["{}"] * n
        t0 = time.perf_counter()
        futures = queue.submit_many(EXP, task_type, payloads)
        got = sum(1 for _ in queue.as_completed(futures, timeout=600))
        elapsed = time.perf_counter() - t0
    finally:
        _stop_workers(procs, stop)
    assert got == n
    return n / elapsed


def bench_reprioritize(queue: LocalTaskQueue, n: int, repeats: int = 3) -> float:
    futures = queue.submit_many(EXP, 20, ["{}"] * n)
    best = float("inf")
    for r in range(repeats):
        prios = [(i * 7919 + r) % 100_000 + 1 for i in range(n)]  # every one changes
        t0 = time.perf_counter()
        changed = queue.set_priorities(futures, prios)
        best = min(best, time.perf_counter() - t0)
        assert len(changed) == n
    return n / best


def bench_latency(queue: Any, rounds: int, target: Any = None, task_type: int = 30) -> tuple[float, float]:
    procs, stop = _start_workers(target or queue.url, task_type, 1, 1)
    samples = []
    try:
        for i in range(rounds + 10):
            t0 = time.perf_counter()
            fut = queue.submit(EXP, task_type, str(i))
            fut.result(timeout=30)
            if i >= 10:  # warm-up rounds excluded
                samples.append(time.perf_counter() - t0)
    finally:
        _stop_workers(procs, stop)
    samples.sort()
    return statistics.median(samples) * 1e3, samples[int(len(samples) * 0.95)] * 1e3


def futures_rss(url: str, n: int) -> float:
    """Peak RSS (MB) of a fresh process that submits and holds n futures."""
    code = (
        "import resource, sys\n"
        "from eqflow.queue import LocalTaskQueue\n"
        "q = LocalTaskQueue(sys.argv[1], migrate=False)\n"
        "n = int(sys.argv[2]); futures = []\n"
        "for start in range(0, n, 10000):\n"
        "    futures += q.submit_many('bench-rss', 40, ['{}'] * min(10000, n - start))\n"
        "assert len(futures) == n\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, url, str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(url: str | None = None, *, n_submit: int = 10_000, n_e2e: int = 20_000, workers: int = 4,
        batch: int = 100, n_reprio: int = 10_000, latency_rounds: int = 200, n_futures: int = 100_000,
        progress: Any = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    bench_url = bench_database(url)
    queue = LocalTaskQueue(bench_url, migrate=False)
    try:
        with psycopg.connect(bench_url) as conn:
            fsync, sync_commit = conn.execute(query("server_durability")).fetchone() or (None, None)
        say("bulk submit")
        submit = bench_submit(queue, n_submit)
        say("end to end")
        e2e = bench_end_to_end(queue, n_e2e, workers, batch)
        say("reprioritize")
        reprio = bench_reprioritize(queue, n_reprio)
        say("latency")
        p50, p95 = bench_latency(queue, latency_rounds)
        say("futures memory")
        rss = futures_rss(bench_url, n_futures)
    finally:
        queue.close()
    return {
        "bulk_submit_tasks_per_s": round(submit),
        "end_to_end_tasks_per_s": round(e2e),
        "end_to_end_workers": workers,
        "end_to_end_tasks": n_e2e,
        "reprioritize_tasks_per_s": round(reprio),
        "latency_p50_ms": round(p50, 2),
        "latency_p95_ms": round(p95, 2),
        "futures": n_futures,
        "futures_peak_rss_mb": round(rss, 1),
        "bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "fsync": fsync,
        "synchronous_commit": sync_commit,
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    print(json.dumps(run(progress=lambda m: print(f"[bench] {m}", file=sys.stderr))))
