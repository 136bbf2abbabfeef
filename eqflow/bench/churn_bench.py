"""`eqflow bench churn`: what a long run leaves behind in the task table.

N tasks (default 1,000,000) go through the queue as an ME keeps them coming: it tops the queue
up to 20,000 queued while 4 worker processes claim and report in batches of 100 (one statement
per batch at steady state), until all N are complete. Sampled every second: dead and live row
versions of ``tasks``, the size of its heap and indexes, and autovacuum runs. The same run is done
twice on the same server, first with PostgreSQL's defaults (autovacuum once dead rows pass 20 % of
the table, looking every minute), then with eqflow's (migration 0011 and the embedded cluster's
10 s naptime), so the two are compared within one run. The naptime is a server setting: it is
changed (ALTER SYSTEM, then reset) only where the benchmark's user is a superuser, as in the
embedded cluster; elsewhere the server's own value is used and reported.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from eqflow.bench.queue_bench import _start_workers, _stop_workers, bench_database
from eqflow.db.migrate import migrations
from eqflow.db.sqlfiles import query
from eqflow.queue import LocalTaskQueue

TYPE = 60
EXP = "bench-churn"
QUEUED = 20_000
CHUNK = 10_000
WORKERS = 4
BATCH = 100

_FIELDS = ("live", "dead", "autovacuums", "updates", "hot_updates", "heap_bytes", "index_bytes",
           "metrics_dead", "metrics_updates", "metrics_hot_updates", "metrics_bytes", "naptime")


def _sample(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute(query("bench_churn_sample")).fetchone()
    if row is None:
        raise RuntimeError("no statistics for the task table")
    return dict(zip(_FIELDS, row, strict=True))


def _apply(conn: psycopg.Connection[Any], settings: str | None) -> None:
    """The task table's autovacuum settings and, where we may (a superuser: the embedded
    cluster), the server's autovacuum_naptime: PostgreSQL's defaults, eqflow's, or (None) the
    migration's table settings and the server's own configuration file."""
    conn.execute(query("bench_autovacuum_defaults"))
    if settings != "defaults":
        vacuum = next(m for m in migrations() if m.name.endswith("vacuum"))
        conn.execute(vacuum.sql)  # trusted text from sql/migrations: the settings a database gets
    row = conn.execute(query("bench_is_superuser")).fetchone()
    if row and row[0]:
        naptime = {"defaults": "bench_naptime_default", "eqflow": "bench_naptime_eqflow"}.get(settings or "")
        conn.execute(query(naptime or "bench_naptime_reset"))
        conn.execute(query("bench_reload_conf"))
        time.sleep(0.5)  # the postmaster rereads its files


def _flushed_sample(conn: psycopg.Connection[Any], updates: int, wait_s: float = 5.0) -> dict[str, Any]:
    """A sample once the statistics show ``updates`` row updates of tasks (a claim and a report
    per task): backends hand their counts to the statistics at most once a second, and a
    stopped worker's backend as it exits, so a short run's last counts come in a moment late."""
    deadline = time.monotonic() + wait_s
    while True:
        sample = _sample(conn)
        if sample["updates"] >= updates or time.monotonic() > deadline:
            return sample
        time.sleep(0.1)


def _one(url: str, settings: str, total: int, say: Callable[[str], None]) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query("bench_churn_truncate"))
        _apply(conn, settings)
        first = _sample(conn)
    samples: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.wait(1.0):
                samples.append(_sample(conn))

    watcher = threading.Thread(target=watch, name="churn-watch", daemon=True)
    queue = LocalTaskQueue(url, migrate=False)
    procs, stop_workers = _start_workers(url, TYPE, WORKERS, BATCH)
    watcher.start()
    submitted = 0
    t0 = time.perf_counter()
    last_say = t0
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                queued, running = conn.execute(query("bench_churn_open"), {"task_type": TYPE}).fetchone() or (0, 0)
                if submitted < total and queued < QUEUED:
                    n = min(CHUNK, total - submitted)
                    queue.submit_many(EXP, TYPE, ["{}"] * n)
                    submitted += n
                    continue
                done = submitted - queued - running
                if done >= total:
                    break
                if time.perf_counter() - last_say > 15:
                    last_say = time.perf_counter()
                    latest = samples[-1] if samples else first
                    say(f"{settings}: {done:,}/{total:,} complete, {latest['dead']:,} dead row versions")
                time.sleep(0.2)
        elapsed = time.perf_counter() - t0
    finally:
        _stop_workers(procs, stop_workers)
        stop.set()
        watcher.join()
        queue.close()
    with psycopg.connect(url, autocommit=True) as conn:
        last = _flushed_sample(conn, first["updates"] + 2 * total)
    seen = samples + [last]
    updates = last["updates"] - first["updates"]
    metrics_updates = last["metrics_updates"] - first["metrics_updates"]
    return {
        "settings": settings, "completions": total, "seconds": round(elapsed, 1),
        "completions_per_s": round(total / elapsed),
        "dead_rows_max": max(s["dead"] for s in seen), "dead_rows_end": last["dead"],
        "dead_rows_mean": round(sum(s["dead"] for s in seen) / len(seen)),
        "live_rows_end": last["live"],
        "autovacuums": last["autovacuums"] - first["autovacuums"],
        "heap_mb": round(last["heap_bytes"] / 2**20, 1), "index_mb": round(last["index_bytes"] / 2**20, 1),
        "hot_update_pct": round(100 * (last["hot_updates"] - first["hot_updates"]) / max(updates, 1), 1),
        "counters_hot_update_pct": round(100 * (last["metrics_hot_updates"] - first["metrics_hot_updates"])
                                         / max(metrics_updates, 1), 1),
        "counters_kb": round(last["metrics_bytes"] / 1024), "counters_dead_rows_end": last["metrics_dead"],
        "autovacuum_naptime": last["naptime"],
    }


def run(url: str | None = None, *, completions: int = 1_000_000,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    bench_url = bench_database(url)
    rows = []
    try:
        for settings in ("defaults", "eqflow"):
            say(f"{settings}: {completions:,} tasks through {WORKERS} workers (batch {BATCH})")
            rows.append(_one(bench_url, settings, completions, say))
    finally:
        with psycopg.connect(bench_url, autocommit=True) as conn:
            _apply(conn, None)  # leave the bench database as migrated, the server as configured
    base, tuned = rows
    ratio = {k: round(tuned[k] / base[k], 2) for k in
             ("dead_rows_max", "dead_rows_mean", "dead_rows_end", "heap_mb", "index_mb", "completions_per_s")
             if base[k]}
    return {"churn": rows, "eqflow_over_defaults": ratio}
