"""The pool runtime, as a real subprocess against a real database."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from eqflow import StopMode, TaskStatus, as_completed
from eqflow.workers.gpu import slot_devices
from tests.conftest import sql, wait_for


def start_pool(db_url, *args, env=None):
    cmd = [sys.executable, "-m", "eqflow.workers.pool", "--db", db_url, *args]
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)




def test_pool_runs_functions_and_reports_failures_with_tracebacks(queue, db_url):
    ok = queue.submit_many("p", 1, [json.dumps({"x": [0, 0]})] * 6)
    bad = queue.submit("p", 1, "not json", max_attempts=1)
    pool = start_pool(db_url, "--types", "1", "--fn", "eqflow.workers.tasks:ackley", "--workers", "2",
                      "--idle-exit", "1")
    try:
        assert len(list(as_completed(ok + [bad], timeout=60))) == 7
        assert all(json.loads(f.result())["y"] == pytest.approx(0, abs=1e-9) for f in ok)
        assert bad.status is TaskStatus.FAILED and "JSONDecodeError" in bad.exception()
        assert pool.wait(timeout=30) == 0
    finally:
        pool.kill()
    [(status, name)] = sql(db_url, "SELECT status, name FROM pools")
    assert (status, name) == ("stopped", "pool")


def test_timeout_and_memory_limit_fail_the_task_and_the_pool_goes_on(queue, db_url):
    hang = queue.submit("p", 2, json.dumps({"seconds": 60}), max_attempts=1)
    quick = queue.submit_many("p", 2, [json.dumps({"seconds": 0})] * 3)
    pool = start_pool(db_url, "--types", "2", "--fn", "eqflow.workers.tasks:sleep", "--workers", "1",
                      "--timeout", "1", "--idle-exit", "1")
    try:
        list(as_completed([hang, *quick], timeout=60))
        assert "timed out after 1s" in hang.exception()
        assert all(f.status is TaskStatus.COMPLETE for f in quick)
    finally:
        pool.wait(timeout=30)
    big = queue.submit("p", 3, json.dumps({"mb": 2048}), max_attempts=1)
    small = queue.submit("p", 3, json.dumps({"mb": 1}))
    pool = start_pool(db_url, "--types", "3", "--fn", "eqflow.workers.tasks:allocate", "--workers", "1",
                      "--mem-limit-mb", "600", "--idle-exit", "1")
    try:
        list(as_completed([big, small], timeout=60))
        assert "memory limit exceeded" in big.exception()
        assert small.result() == str(1024 * 1024)
    finally:
        pool.wait(timeout=30)


def test_shell_command_template(queue, db_url):
    fut = queue.submit("p", 4, "it's $(not run)")
    pool = start_pool(db_url, "--types", "4", "--cmd", "printf '%s|' {payload} && cat {payload_file}",
                      "--idle-exit", "1")
    try:
        assert fut.result(timeout=30) == "it's $(not run)|it's $(not run)"
    finally:
        pool.wait(timeout=30)


def test_sigterm_returns_unfinished_tasks_at_once(queue, db_url):
    futs = queue.submit_many("p", 5, [json.dumps({"seconds": 60})] * 4)
    pool = start_pool(db_url, "--types", "5", "--fn", "eqflow.workers.tasks:sleep", "--workers", "2",
                      "--batch-size", "3")
    assert wait_for(lambda: queue.stats("p")[5].get("running") == 3)
    pool.send_signal(signal.SIGTERM)
    assert pool.wait(timeout=20) == 0
    assert {f.status for f in futs} == {TaskStatus.QUEUED}
    # attempts counts runs started: the 2 started keep theirs, the one claimed but never
    # started and the one never claimed have none; a release is no failure
    rows = sql(db_url, "SELECT attempts, failures FROM tasks WHERE task_type = 5")
    assert sorted(r[0] for r in rows) == [0, 0, 1, 1]
    assert {r[1] for r in rows} == {0}
    assert sql(db_url, "SELECT status FROM pools") == [("stopped",)]


def test_sigkill_mid_batch_requeues_by_lease_and_another_pool_finishes(queue, db_url):
    futs = queue.submit_many("p", 6, [json.dumps({"seconds": 0.5})] * 6)
    doomed = start_pool(db_url, "--types", "6", "--fn", "eqflow.workers.tasks:sleep", "--workers", "2",
                        "--batch-size", "4", "--lease", "1")
    assert wait_for(lambda: queue.stats("p")[6].get("running", 0) >= 2)
    doomed.kill()  # SIGKILL the pool process; its workers die with their pipe
    doomed.wait()
    rescuer = start_pool(db_url, "--types", "6", "--fn", "eqflow.workers.tasks:sleep", "--workers", "2",
                         "--lease", "1", "--idle-exit", "3")
    try:
        assert len(list(as_completed(futs, timeout=60))) == 6
        assert all(f.status is TaskStatus.COMPLETE for f in futs)
        pools = {r[0] for r in sql(db_url, "SELECT pool FROM tasks WHERE task_type = 6")}
        assert len(pools) >= 1 and all(p.startswith("pool-") for p in pools)
    finally:
        rescuer.wait(timeout=30)


def test_stop_requests_drain_or_now(queue, db_url):
    futs = queue.submit_many("p", 7, [json.dumps({"seconds": 0.05})] * 10)
    pool = start_pool(db_url, "--types", "7", "--fn", "eqflow.workers.tasks:sleep", "--workers", "1")
    assert wait_for(lambda: len(queue.pools(active_only=True)) == 1)
    queue.stop_pools(7, StopMode.DRAIN)
    assert pool.wait(timeout=30) == 0
    assert all(f.status is TaskStatus.COMPLETE for f in futs)

    more = queue.submit_many("p", 7, [json.dumps({"seconds": 0.5})] * 10)
    pool = start_pool(db_url, "--types", "7", "--fn", "eqflow.workers.tasks:sleep", "--workers", "1")
    assert wait_for(lambda: queue.stats("p")[7].get("running") == 1)
    queue.stop_pools(7, StopMode.NOW)
    assert pool.wait(timeout=30) == 0
    statuses = [f.status for f in more]
    assert statuses.count(TaskStatus.QUEUED) >= 8 and TaskStatus.RUNNING not in statuses


RUNNING = "SELECT count(*) FROM tasks WHERE task_id = ANY(%s) AND status = 'running'"


def _running(db_url: str, ids: list[int]) -> int:
    return int(sql(db_url, RUNNING, (ids,))[0][0])


@contextmanager
def _reports_held_up(db_url: str, first_ids: list[int]) -> Iterator[None]:
    """Once the pool runs ``first_ids``, lock their rows (FOR SHARE) until the block ends: their
    reports wait; claims skip locked rows and go on. The pool's heartbeat right after its first
    claim would wait on the lock too, so it passes first (the next is 30 s away: --lease 120)."""
    assert wait_for(lambda: _running(db_url, first_ids) == len(first_ids), timeout=30)
    beat = "SELECT bool_and(p.heartbeat_at > t.started_at) FROM pools p, tasks t WHERE t.task_id = ANY(%s)"
    assert wait_for(lambda: sql(db_url, beat, (first_ids,)) == [(True,)], timeout=30)
    with psycopg.connect(db_url) as blocker:
        blocker.execute("SELECT 1 FROM tasks WHERE task_id = ANY(%s) FOR SHARE", (first_ids,))
        yield


def test_workers_idle_while_a_report_is_held_up_get_tasks_claimed_beside_it(queue, db_url):
    """A report (and the claim that rides with it) that takes long does not leave the workers
    idle: the pool claims on another connection meanwhile (a batch of at least twice the
    workers), holding at most twice its batch."""
    first = queue.submit_many("p", 21, [json.dumps({"seconds": 0.4})] * 4, priority=10)
    later = queue.submit_many("p", 21, [json.dumps({"seconds": 0})] * 8)
    pool = start_pool(db_url, "--types", "21", "--fn", "eqflow.workers.tasks:sleep", "--workers", "1",
                      "--batch-size", "4", "--idle-exit", "2", "--lease", "120")
    later_ids = [f.task_id for f in later]
    try:
        with _reports_held_up(db_url, [f.task_id for f in first]):
            # the report of the first task waits; its claim holds one later task, the claim
            # beside it takes the rest of the batch and runs them
            assert wait_for(lambda: _running(db_url, later_ids) >= 3, timeout=30)
            # then it stops: 3 finished and 1 more wait for the report, 1 comes with it, 3 ran
            # beside it: 8, twice the batch (finished tasks are still the pool's until reported)
            time.sleep(1.0)
            assert _running(db_url, later_ids) == 3
            assert sql(db_url, "SELECT count(*) FROM tasks WHERE status = 'complete'") == [(0,)]
        assert len(list(as_completed(first + later, timeout=60))) == 12
        assert all(f.status is TaskStatus.COMPLETE for f in first + later)
        assert sql(db_url, "SELECT DISTINCT attempts FROM tasks WHERE task_type = 21") == [(1,)]
        assert pool.wait(timeout=30) == 0
    finally:
        pool.kill()


def test_a_pool_holding_one_task_per_worker_does_not_claim_beside_its_report(queue, db_url):
    """Batch = workers (the default): a worker idle while the report is held up waits for it, so
    the pool never holds more than its workers run (and the tasks' times in the database stay
    theirs)."""
    short = queue.submit("p", 22, json.dumps({"seconds": 0.3}), priority=10)
    long = queue.submit("p", 22, json.dumps({"seconds": 0.8}), priority=9)
    later = queue.submit_many("p", 22, [json.dumps({"seconds": 0})] * 4)
    pool = start_pool(db_url, "--types", "22", "--fn", "eqflow.workers.tasks:sleep", "--workers", "2",
                      "--idle-exit", "2", "--lease", "120")
    try:
        with _reports_held_up(db_url, [short.task_id, long.task_id]):
            time.sleep(1.5)  # both have finished; the first one's report (with its claim) waits
            assert _running(db_url, [f.task_id for f in later]) == 0
        assert len(list(as_completed([short, long, *later], timeout=60))) == 6
        assert pool.wait(timeout=30) == 0
    finally:
        pool.kill()


def test_threads_mode(queue, db_url):
    futs = queue.submit_many("p", 8, [json.dumps({"seconds": 0.3})] * 8)
    pool = start_pool(db_url, "--types", "8", "--fn", "eqflow.workers.tasks:sleep", "--workers", "8",
                      "--threads", "--idle-exit", "1")
    t0 = time.monotonic()
    list(as_completed(futs, timeout=30))
    assert time.monotonic() - t0 < 2.4  # concurrent, not 8 x 0.3 s in a row
    pool.wait(timeout=30)


def test_gpu_slots_give_each_worker_its_device(queue, db_url):
    assert slot_devices(["0", "1"], 2) == ["0", "0", "1", "1"]
    with pytest.raises(ValueError, match="no GPUs"):
        slot_devices([], 1)
    with pytest.raises(ValueError, match="more than the 2 GPU slots"):
        slot_devices(["0", "1"], 1, 3)
    futs = queue.submit_many("p", 9, [json.dumps({"seconds": 0.4})] * 4)
    probes = queue.submit_many("p", 10, ["?"] * 40)
    pool = start_pool(db_url, "--types", "9", "10", "--fn", "eqflow.workers.tasks:cuda_device", "--gpu",
                      "--workers-per-gpu", "2", "--idle-exit", "1", env={"CUDA_VISIBLE_DEVICES": "3,5"})
    try:
        seen = {f.result() for f in as_completed(futs + probes, timeout=60)}
        assert seen == {"3", "5"}
        [(info,)] = sql(db_url, "SELECT info FROM pools")
        assert info["gpus"] == ["3", "3", "5", "5"]
    finally:
        pool.wait(timeout=30)


def test_bad_pool_arguments_exit_with_a_message(db_url):
    out = subprocess.run([sys.executable, "-m", "eqflow.workers.pool", "--db", db_url, "--types", "1",
                          "--fn", "no.such.module:f"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "No module named 'no'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "eqflow.workers.pool", "--db", db_url, "--types", "1",
                          "--fn", "eqflow.workers.tasks:noop", "--workers", "2", "--threshold", "5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "threshold must be in 1..batch_size" in out.stderr


