"""A killed worker never loses a task and never yields a duplicate completion."""

import multiprocessing as mp
import os
import signal
import time

from eqflow import ClaimedTask, LocalTaskQueue, TaskStatus
from tests.conftest import sql


def _claim_and_hang(url: str, n: int, pipe) -> None:
    queue = LocalTaskQueue(url, migrate=False, lease_s=1.0)
    tasks = queue.claim(1, n=n, pool="doomed")
    pipe.send([(t.task_id, t.claim_id, t.attempt) for t in tasks])
    time.sleep(600)


def _kill_holder(url: str, n: int) -> list[tuple[int, int, int]]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_claim_and_hang, args=(url, n, child))
    proc.start()
    held = parent.recv()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    return held


def test_sigkilled_worker_tasks_are_requeued_and_finished_elsewhere(queue, db_url):
    futs = queue.submit_many("crash", 1, [str(i) for i in range(10)])
    held = _kill_holder(db_url, 5)
    assert len(held) == 5
    rescuer = LocalTaskQueue(db_url, migrate=False, lease_s=1.0, safety_poll_s=0.3)
    done = 0
    deadline = time.monotonic() + 30
    while done < 10 and time.monotonic() < deadline:
        tasks = rescuer.claim(1, n=10, pool="rescuer", timeout=2)
        done += len(rescuer.report([(t, "ok") for t in tasks]))
    assert done == 10
    assert [f.result(timeout=5) for f in futs] == ["ok"] * 10

    # The dead lease's late reports are refused: the tasks keep their one completion.
    stale = [ClaimedTask(tid, "crash", 1, 0, "", None, attempt, claim_id, "doomed")
             for tid, claim_id, attempt in held]
    assert queue.report([(t, "late") for t in stale]) == set()
    rows = sql(db_url, "SELECT attempts, result FROM tasks WHERE task_id = ANY(%s)", ([h[0] for h in held],))
    assert rows and all(r == (2, "ok") for r in rows)
    rescuer.close()


def test_expired_lease_after_max_attempts_fails_with_reason(queue, db_url):
    fut = queue.submit("crash", 1, "only-once", max_attempts=1)
    _kill_holder(db_url, 1)
    time.sleep(1.2)
    assert queue.rescue_expired() == {fut.task_id: TaskStatus.FAILED}
    assert fut.status is TaskStatus.FAILED
    assert "lease expired" in fut.exception()


def test_heartbeat_keeps_a_lease_alive(db_url):
    queue = LocalTaskQueue(db_url, migrate=False, lease_s=1.0)
    queue.submit("hb", 1, "long task")
    [task] = queue.claim(1, pool="p")
    for _ in range(4):
        time.sleep(0.4)
        assert queue.extend_leases([task]) == {task.task_id}
        assert queue.rescue_expired() == {}
    assert queue.report([(task, "done")]) == {task.task_id}
    queue.close()
