"""Exactly-once delivery and priority order under contention: 8 processes, 20,000 tasks."""

import bisect
import multiprocessing as mp
import os
import random
import time

from eqflow import LocalTaskQueue
from tests.conftest import sql

N_TASKS = 20_000
N_PROCS = 8


def _claimer(url: str, seed: int, start, out) -> None:
    rng = random.Random(seed)
    queue = LocalTaskQueue(url, migrate=False, pool_size=1)
    log = []
    start.wait()
    while True:
        t0 = time.monotonic()
        tasks = queue.claim(1, n=rng.randint(1, 40), pool=f"proc-{os.getpid()}")
        t1 = time.monotonic()
        if not tasks:
            break
        log.append((t0, t1, [(t.task_id, t.priority) for t in tasks]))
        accepted = queue.report([(t, str(os.getpid())) for t in tasks])
        assert accepted == {t.task_id for t in tasks}
    queue.close()
    out.put((os.getpid(), log))


def test_exactly_once_and_priority_order(queue, db_url):
    rng = random.Random(7)
    queue.submit_many("contention", 1, ["{}"] * N_TASKS, priority=[rng.randint(0, 20) for _ in range(N_TASKS)])
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(db_url, i, start, out)) for i in range(N_PROCS)]
    for p in procs:
        p.start()
    start.set()
    logs = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    claimed_by: dict[int, int] = {}
    claims = []
    for pid, log in logs:
        for t0, t1, tasks in log:
            claims.append((t0, t1, [prio for _, prio in tasks]))
            for task_id, _ in tasks:
                assert task_id not in claimed_by, f"task {task_id} claimed twice"
                claimed_by[task_id] = pid
    assert len(claimed_by) == N_TASKS

    rows = sql(db_url, "SELECT task_id, status::text, attempts, result FROM tasks")
    assert len(rows) == N_TASKS
    for task_id, status, attempts, result in rows:
        assert (status, attempts) == ("complete", 1)
        assert result == str(claimed_by[task_id])  # completed once, by its claimer

    # A claim that ended before another began never holds a lower priority than the later one.
    by_end = sorted(claims, key=lambda c: c[1])
    ends = [c[1] for c in by_end]
    prefix_min = []
    low = float("inf")
    for _, _, prios in by_end:
        low = min(low, min(prios))
        prefix_min.append(low)
    checked = 0
    for t0, _, prios in claims:
        k = bisect.bisect_left(ends, t0)
        if k:
            checked += 1
            assert prefix_min[k - 1] >= max(prios), "a higher-priority task was claimed later"
    assert checked > len(claims) // 2
