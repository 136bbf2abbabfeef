"""The commit ceiling, rung by rung: how far a batch-1 worker is from ``pgbench -N`` and why.

Goal 1 of issue #13 measures eqflow's batch-1 end to end against the one-commit-per-task limit
``pgbench -N`` shows on the same server. This runs, with the same number of clients and in
alternating rounds, six workloads that each add one thing to the one before:

1. ``pgbench``: pgbench -N, its C client (the limit the goal names).
2. ``psycopg, pgbench's txn``: the same transaction (update, select, insert, commit: five round
   trips) from Python processes through psycopg, prepared: what the Python client costs.
3. ``eqflow data path``: one statement per task on eqflow's tables, autocommit: report the held
   task and claim the next (two row updates, a dequeue, a commit), without the counters or the
   announcement (``ladder_report_and_claim`` in sql/bench.sql). The least a worker must do.
4. ``eqflow's statement``: the ``report_and_claim`` statement the worker API sends (the
   PL/pgSQL function of migration 0015: its counters, the completions kept for their
   announcement), prepared, without the announcement.
5. ``eqflow worker API``: ``LocalTaskQueue.report_and_claim`` with tasks already queued: that
   statement, then the announcement of the completions (``notify_done`` in the same round trip,
   its own transaction), validation and the ``ClaimedTask`` objects.
6. ``eqflow end to end``: ``eqflow bench peers``' batch-1 workload: the ME submits the tasks and
   gathers them with ``as_completed`` while the workers run (cpu_split.py's measure; its CPU is
   that of the ME, the workers and PostgreSQL).

Each line gives the rate, its share of pgbench's, and the machine's busy CPU per operation
(psutil's system-wide CPU times over the window; on a machine whose cores are all busy the rate
is about cores / that).

    .venv/bin/python benchmarks/commit_ceiling.py --rounds 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import time
from collections.abc import Callable
from typing import Any

import psutil
import psycopg
from cpu_split import measure  # beside this script: end to end with its CPU split

from eqflow.bench.peers_bench import pgbench_database, run_pgbench
from eqflow.bench.queue_bench import bench_database
from eqflow.db.resolve import resolve_url
from eqflow.db.sqlfiles import query
from eqflow.queue import LocalTaskQueue

TASK_TYPE = 88
PGBENCH_ACCOUNTS = 100_000  # pgbench -i at scale 1
PGBENCH_TELLERS = 10


def _busy_cpu_s() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


# -- the client loops: each runs in its own process and counts its operations -------------------
def _pgbench_txn(url: str) -> Callable[[], None]:
    conn = psycopg.connect(url, autocommit=True)
    update, select, insert = (query(n) for n in ("peer_pgbench_update", "peer_pgbench_select",
                                                 "peer_pgbench_insert"))

    def one() -> None:
        aid = random.randint(1, PGBENCH_ACCOUNTS)
        delta = random.randint(-5000, 5000)
        with conn.transaction():
            conn.execute(update, {"aid": aid, "delta": delta}, prepare=True)
            conn.execute(select, {"aid": aid}, prepare=True).fetchone()
            conn.execute(insert, {"tid": random.randint(1, PGBENCH_TELLERS), "bid": 1, "aid": aid,
                                  "delta": delta}, prepare=True)
    return one


def _data_path(url: str) -> Callable[[], None]:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(query("ladder_quiet_session"))
    statement = query("ladder_report_and_claim")
    held: list[Any] = [None, None]
    pool = f"ladder-{os.getpid()}"

    def one() -> None:
        row = conn.execute(statement, {"task_id": held[0], "claim_id": held[1], "result": "{}",
                                       "task_type": TASK_TYPE, "pool": pool}, prepare=True).fetchone()
        assert row is not None  # one row always
        if row[1] is None:
            raise RuntimeError("the queue ran dry: submit more tasks")
        held[:] = row[1:]
    return one


def _statement(url: str) -> Callable[[], None]:
    conn = psycopg.connect(url, autocommit=True)
    statement = query("report_and_claim")
    pool = f"ladder-{os.getpid()}"
    args: dict[str, Any] = {"task_types": [TASK_TYPE], "n": 1, "pool": pool, "lease_s": 3600.0}
    held = [row for row in conn.execute(statement, {**args, "task_ids": [], "claim_ids": [], "results": []})
            if row[0]]

    def one() -> None:
        nonlocal held
        report = {"task_ids": [t[1] for t in held], "claim_ids": [t[8] for t in held], "results": [b"{}"] * len(held)}
        held = [row for row in conn.execute(statement, {**args, **report}, prepare=True) if row[0]]
        if not held:
            raise RuntimeError("the queue ran dry: submit more tasks")
    return one


def _worker_api(url: str) -> Callable[[], None]:
    queue = LocalTaskQueue(url, migrate=False, pool_size=1)
    pool = f"ladder-{os.getpid()}"
    held = queue.claim(TASK_TYPE, n=1, pool=pool)

    def one() -> None:
        nonlocal held
        _, held = queue.report_and_claim([(t, t.payload) for t in held], TASK_TYPE, n=1, pool=pool)
        if not held:
            raise RuntimeError("the queue ran dry: submit more tasks")
    return one


LOOPS = {"pgbench_txn": _pgbench_txn, "data_path": _data_path, "statement": _statement, "worker_api": _worker_api}


def _client(kind: str, url: str, seconds: float, ready: Any, go: Any, counts: Any) -> None:
    one = LOOPS[kind](url)
    ready.release()
    go.wait()
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        one()
        n += 1
    counts.put(n)


def _clients(kind: str, url: str, clients: int, seconds: float) -> tuple[float, float]:
    """(operations per second, busy CPU µs per operation) of ``clients`` processes running
    ``kind`` for ``seconds`` together (timed from when all of them are connected)."""
    ctx = mp.get_context("spawn")
    ready, go, counts = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(kind, url, seconds, ready, go, counts), daemon=True)
             for _ in range(clients)]
    for proc in procs:
        proc.start()
    for _ in procs:
        if not ready.acquire(timeout=60):
            raise RuntimeError(f"a {kind} client did not start (exit codes {[p.exitcode for p in procs]})")
    cpu0 = _busy_cpu_s()
    go.set()
    total = sum(counts.get(timeout=seconds + 60) for _ in procs)
    cpu = _busy_cpu_s() - cpu0
    for proc in procs:
        proc.join(timeout=10)
    return total / seconds, 1e6 * cpu / max(total, 1)


def _pgbench(env: dict[str, str], clients: int, seconds: float) -> tuple[float, float]:
    cpu0 = _busy_cpu_s()
    out = run_pgbench(env, clients, seconds)
    cpu = _busy_cpu_s() - cpu0
    done = int(next(line for line in out.splitlines() if "transactions actually processed" in line).split()[-1])
    return done / seconds, 1e6 * cpu / max(done, 1)


def one_round(base: str, clients: int, seconds: float, pg_user: str,
              say: Callable[[str], None]) -> dict[str, tuple[float, float]]:
    rungs: dict[str, tuple[float, float]] = {}
    with pgbench_database(base) as (url, env):
        say("pgbench -N")
        rungs["pgbench"] = _pgbench(env, clients, seconds)
        say("pgbench's transaction from psycopg")
        rungs["psycopg, pgbench's txn"] = _clients("pgbench_txn", url, clients, seconds)
    bench_url = bench_database(base)
    queue = LocalTaskQueue(bench_url, migrate=False)
    try:
        ceiling = rungs["pgbench"][0]
        for label, kind in (("eqflow data path", "data_path"), ("eqflow's statement", "statement"),
                            ("eqflow worker API", "worker_api")):
            # enough tasks for twice pgbench's rate (a rung that runs dry says so)
            queue.submit_many("ladder", TASK_TYPE, ["{}"] * int(2 * ceiling * seconds + 1000))
            say(label)
            rungs[label] = _clients(kind, bench_url, clients, seconds)
            bench_database(base)  # empty again
    finally:
        queue.close()
    say("eqflow end to end")
    end_to_end = measure(bench_url, max(1000, int(ceiling * seconds / 4)), clients, 1, pg_user)
    rungs["eqflow end to end"] = (end_to_end["tasks_per_s"], end_to_end["total_us_per_task"])
    return rungs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="database URL (default: the embedded cluster)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (pgbench -c)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each timed window")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pg-user", default="eqflow", help="the user PostgreSQL's processes run as")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args()
    base = resolve_url(args.url, migrate=False)
    say: Callable[[str], None] = (lambda msg: None) if args.quiet else (lambda msg: print(f"  .. {msg}", flush=True))
    print(f"{args.clients} clients, {args.seconds:g} s windows, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}")
    for r in range(args.rounds):
        rungs = one_round(base, args.clients, args.seconds, args.pg_user, say)
        ceiling = rungs["pgbench"][0]
        print(f"round {r + 1}")
        for label, (rate, cpu_us) in rungs.items():
            print(f"  {label:24s} {rate:8,.0f}/s  {rate / ceiling:5.0%} of pgbench  {cpu_us:6,.0f} µs CPU/op",
                  flush=True)


if __name__ == "__main__":
    main()
