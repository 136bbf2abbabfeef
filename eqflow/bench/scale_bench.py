"""`eqflow bench scale`: does anything degrade as the task table grows? The same operations on
a small and a large table (default 10,000 and 100,000 tasks; ``--million``: 100,000 and
1,000,000), a fifth of each queued, the rest finished history:

* claim latency, p50/p95 over 1,000 single-task claims;
* submit of a fifth of the size in one call; reprioritization of every queued task;
* ``as_completed`` over as many futures while 4 worker processes (batch 100) run them;
* the ME's peak memory (this process) and the table's live/dead row versions after the run.

Per-task costs that stay flat from the small to the large size (10x the rows) are O(log n) or
better; the JSON line has both sizes and their ratio.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg

from eqflow.bench.queue_bench import _start_workers, _stop_workers, bench_database
from eqflow.db.sqlfiles import query
from eqflow.queue import LocalTaskQueue

TYPE = 50
EXP = "bench-scale"


def _one(url: str, total: int, say: Callable[[str], None]) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query("bench_truncate"))
        say(f"{total:,}: history of {total - total // 5:,} finished tasks")
        for start in range(0, total - total // 5, 200_000):
            conn.execute(query("bench_fill_finished"),
                         {"exp_id": EXP, "task_type": TYPE, "n": min(200_000, total - total // 5 - start)})
        conn.execute(query("bench_vacuum_tasks"))
    queue = LocalTaskQueue(url, migrate=False)
    out: dict[str, Any] = {"tasks": total}
    try:
        queued = total // 5
        say(f"{total:,}: submit {queued:,}")
        t0 = time.perf_counter()
        futures: list[Any] = []
        futures += queue.submit_many(EXP, TYPE, ["{}"] * queued)
        out["submit_per_s"] = round(queued / (time.perf_counter() - t0))
        say(f"{total:,}: reprioritize {queued:,}")
        prios = [(i * 7919) % 1_000_003 + 1 for i in range(queued)]
        t0 = time.perf_counter()
        queue.set_priorities(futures, prios)
        out["reprioritize_per_s"] = round(queued / (time.perf_counter() - t0))
        say(f"{total:,}: 1,000 claims")
        lat = []
        claimed = []
        for _ in range(1000):
            t0 = time.perf_counter()
            claimed += queue.claim(TYPE, n=1, pool="scale")
            lat.append(time.perf_counter() - t0)
        lat.sort()
        out["claim_p50_ms"] = round(statistics.median(lat) * 1e3, 3)
        out["claim_p95_ms"] = round(lat[int(len(lat) * 0.95)] * 1e3, 3)
        queue.report([(t, "{}") for t in claimed])
        say(f"{total:,}: as_completed over {queued:,} futures, 4 workers")
        procs, stop = _start_workers(url, TYPE, 4, 100)
        try:
            t0 = time.perf_counter()
            done = sum(1 for _ in queue.as_completed(futures, timeout=3600))
            out["as_completed_per_s"] = round(done / (time.perf_counter() - t0))
        finally:
            _stop_workers(procs, stop)
        out["me_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(query("bench_analyze_tasks"))  # fresh statistics for the row counts below
            row = conn.execute(query("bench_dead_tuples")).fetchone()
        if row:
            out.update(live_rows=row[0], dead_rows=row[1], autovacuums=row[2], table_mb=round(row[3] / 2**20, 1))
    finally:
        queue.close()
    return out


def run(url: str | None = None, *, million: bool = False,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    bench_url = bench_database(url)
    small, large = (100_000, 1_000_000) if million else (10_000, 100_000)
    rows = [_one(bench_url, small, say), _one(bench_url, large, say)]
    ratio = {k: round(rows[1][k] / rows[0][k], 2) for k in
             ("claim_p50_ms", "claim_p95_ms", "submit_per_s", "reprioritize_per_s", "as_completed_per_s")
             if rows[0].get(k)}
    return {"scale": rows, "large_over_small": ratio}
