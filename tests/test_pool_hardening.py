"""Pools that outlive their workers: a worker killed while idle or busy is replaced and the pool
goes on."""

import json
import signal
import subprocess
import sys
import time

import psutil

from eqflow import TaskStatus, as_completed
from tests.conftest import sql, wait_for


def start_pool(db_url, *args):
    return subprocess.Popen([sys.executable, "-m", "eqflow.cli", "pool", "run", "--db", db_url, *args],
                            stderr=subprocess.PIPE, text=True)


def workers_of(pool):
    return [c for c in psutil.Process(pool.pid).children() if "spawn_main" in " ".join(c.cmdline())]


def test_workers_killed_idle_or_busy_are_replaced_and_the_pool_goes_on(queue, db_url):
    pool = start_pool(db_url, "--types", "41", "--fn", "eqflow.workers.tasks:sleep", "--workers", "2")
    try:
        assert wait_for(lambda: len(workers_of(pool)) == 2, timeout=30)
        for worker in workers_of(pool):  # both idle: nothing to run yet
            worker.send_signal(signal.SIGKILL)
        time.sleep(0.5)
        first = queue.submit_many("idle-kill", 41, [json.dumps({"seconds": 0})] * 4)
        assert all(f.status is TaskStatus.COMPLETE for f in as_completed(first, timeout=60))
        busy = queue.submit("idle-kill", 41, json.dumps({"seconds": 30}))
        assert wait_for(lambda: busy.status is TaskStatus.RUNNING, timeout=30)
        time.sleep(0.3)
        for worker in workers_of(pool):
            worker.send_signal(signal.SIGKILL)  # one of them runs the long task
        later = queue.submit_many("idle-kill", 41, [json.dumps({"seconds": 0})] * 4)
        assert all(f.status is TaskStatus.COMPLETE for f in as_completed(later, timeout=60))
        assert pool.poll() is None, "the pool exited"
        # the killed run was a failed attempt (its reason recorded) and the task runs again
        assert wait_for(lambda: sql(db_url, "SELECT attempts FROM tasks WHERE task_id = %s",
                                    (busy.task_id,))[0][0] >= 2, timeout=30)
    finally:
        pool.send_signal(signal.SIGTERM)
        _, err = pool.communicate(timeout=30)
    assert pool.returncode == 0, err
    assert "worker replaced" in err
