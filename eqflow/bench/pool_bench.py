"""`eqflow bench pool`: tasks/s through one pool with 1, 2, 4 workers, on no-op and 10 ms tasks,
beside the ideal (workers / task time)."""

from __future__ import annotations

import json
import time
from typing import Any

from eqflow.bench.queue_bench import bench_database, bench_end_to_end
from eqflow.queue import LocalTaskQueue
from eqflow.workers.launchers import JobState, LocalLauncher, PoolSpec, wait
from eqflow.workers.tasks import sleep

RAW_BATCH = 100  # what each process of the raw loop holds (eqflow bench queue)
BIG_N = 10_000  # tasks for the runs beside the raw loop (5,000 take it a quarter of a second)


def _one(queue: LocalTaskQueue, task_type: int, workers: int, seconds: float, n: int, batch: int,
         prefetch: bool = True) -> float:
    launcher = LocalLauncher()
    fn = "eqflow.workers.tasks:" + ("sleep" if seconds else "noop")
    job = launcher.start(PoolSpec([task_type], fn=fn, workers=workers,
                                  batch_size=batch, db_url=queue.url, idle_exit=2, prefetch=prefetch))
    deadline = time.monotonic() + 60
    while not any(str(p.pid) == job for p in queue.pools(active_only=True)):  # warm: pool registered
        if time.monotonic() > deadline:
            raise RuntimeError("pool did not start")
        time.sleep(0.05)
    time.sleep(0.5)  # let its worker processes finish importing
    payload = json.dumps({"seconds": seconds})
    t0 = time.perf_counter()
    futures = queue.submit_many("bench-pool", task_type, [payload] * n)
    done = sum(1 for _ in queue.as_completed(futures, timeout=600))
    elapsed = time.perf_counter() - t0
    launcher.cancel(job)
    if wait(launcher, job, timeout=30) is JobState.RUNNING:
        raise RuntimeError("pool did not stop")
    assert done == n
    return n / elapsed


def _alone(seconds: float, n: int = 200) -> float:
    """Seconds one sleep task takes when run back to back in this process, no pool (the ceiling
    of a pool's rate is workers / this)."""
    payload = json.dumps({"seconds": seconds})
    t0 = time.perf_counter()
    for _ in range(n):
        sleep(payload)
    return (time.perf_counter() - t0) / n


def run(url: str | None = None, progress: Any = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    queue = LocalTaskQueue(bench_database(url), migrate=False)
    rows: list[dict[str, Any]] = []
    task_type = 100
    say("the 10 ms task alone, in this process")
    own_s = _alone(0.01)
    try:
        cases = ((s, label, w, pre) for s, label in ((0.0, "noop"), (0.01, "10ms"))
                 for w in (1, 2, 4) for pre in (False, True))
        for seconds, label, workers, prefetch in cases:
            task_type += 1
            n = 5000 if seconds == 0 else 300 * workers
            batch = workers * 8  # 8 in hand per worker
            say(f"{label} x {workers} workers, batch {batch}, prefetch {'on' if prefetch else 'off'}")
            rate = _one(queue, task_type, workers, seconds, n, batch, prefetch)
            ideal = workers / seconds if seconds else None
            rows.append({"task": label, "workers": workers, "batch": batch, "prefetch": prefetch, "tasks": n,
                         "tasks_per_s": round(rate), "ideal_tasks_per_s": ideal,
                         "efficiency": round(rate / ideal, 2) if ideal else None,
                         # against what the task itself takes here (a 10 ms sleep oversleeps)
                         "efficiency_vs_task_alone": round(rate * own_s / workers, 2) if seconds else None})
        # The pool beside the raw claim/report loop of `eqflow bench queue` (4 processes, each
        # holding up to RAW_BATCH), same run: with 25 per worker, then with the raw loop's 100
        # per worker (the same number of tasks in hand as the raw loop).
        say(f"raw claim/report loop x 4 processes, batch {RAW_BATCH} each")
        raw = [bench_end_to_end(queue, BIG_N, 4, RAW_BATCH, task_type=task_type + 1)]
        for batch in (RAW_BATCH, 4 * RAW_BATCH):
            task_type += 2
            say(f"noop x 4 workers, batch {batch}, prefetch on")
            rate = _one(queue, task_type, 4, 0.0, BIG_N, batch, True)
            rows.append({"task": "noop", "workers": 4, "batch": batch, "prefetch": True, "tasks": BIG_N,
                         "tasks_per_s": round(rate), "ideal_tasks_per_s": None, "efficiency": None})
        say("raw claim/report loop again (the figures below use the mean of both runs)")
        raw.append(bench_end_to_end(queue, BIG_N, 4, RAW_BATCH, task_type=task_type + 2))
    finally:
        queue.close()
    raw_rate = sum(raw) / len(raw)

    def noop4(batch: int) -> float:
        return float(next(r["tasks_per_s"] for r in rows if r["task"] == "noop" and r["workers"] == 4
                          and r["prefetch"] and r["batch"] == batch))

    return {"pool": rows, "task_10ms_alone_ms": round(own_s * 1e3, 2), "raw_loop_tasks_per_s": [round(r) for r in raw],
            "noop_4_workers_over_raw": round(noop4(32) / raw_rate, 2),
            "noop_4_workers_batch_100_over_raw": round(noop4(RAW_BATCH) / raw_rate, 2),
            "noop_4_workers_same_in_hand_over_raw": round(noop4(4 * RAW_BATCH) / raw_rate, 2)}
