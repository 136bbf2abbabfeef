"""EQ-SQL ports run unchanged: the call patterns of an EQ-SQL ME, of EQ-SQL-style Python pools
and of EQ-SQL's Swift/T glue (single-task and batch), each against a real database and, for the
pools, in real subprocesses. Also the reported compat defects, one test each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from eqflow.compat import eqsql
from eqflow.compat.eqsql import EQ_ABORT, EQ_STOP, EQ_TIMEOUT, ResultStatus, TaskStatus
from tests.conftest import sql, wait_for

# -- EQ-SQL-shaped scripts, written for these tests (the one change a port makes: the import) ----

SWIFT_GLUE = '''
"""Swift/T glue in the shape of EQ-SQL's eqsql_swift.py: a queue per call, env-configured."""
import logging
import multiprocessing as mp
import os
import threading
import time
import traceback

from eqflow.compat import eqsql as local_queue
from eqflow.compat.eqsql import ABORT_MSG


def _create_queue(retry_threshold=0, log_level=logging.WARN):
    port = os.getenv("DB_PORT")
    password = None
    if os.getenv("DB_PASSWORD_F"):
        with open(os.environ["DB_PASSWORD_F"]) as f:
            password = f.readline().strip()
    return local_queue.init_task_queue(os.getenv("DB_HOST"), os.getenv("DB_USER"),
                                       int(port) if port else None, os.getenv("DB_NAME"),
                                       password, retry_threshold, log_level)


def query_task(work_type, worker_pool, query_timeout=120.0, retry_threshold=0, log_level=logging.WARN):
    q = None
    try:
        q = _create_queue(retry_threshold, log_level)
        q.logger.debug("swift query_task")
        msg = q.query_task(work_type, worker_pool=worker_pool, timeout=query_timeout)
        items = [msg["type"], msg["payload"]]
        if msg["type"] == "work":
            items.append(str(msg["eq_task_id"]))
        q.logger.debug("swift query_task done")
        return "|".join(items)
    except Exception:
        if q is None:
            print("query_task error", traceback.format_exc(), flush=True)
        else:
            q.logger.error("query_task error %s", traceback.format_exc())
        return ABORT_MSG
    finally:
        if q is not None:
            q.close()


def report_task(eq_task_id, work_type, result, retry_threshold=0, log_level=logging.WARN):
    q = None
    try:
        q = _create_queue(retry_threshold, log_level)
        return q.report_task(eq_task_id, work_type, result)
    except Exception:
        if q is None:
            print("report_task error", traceback.format_exc(), flush=True)
        else:
            q.logger.error("report_task error %s", traceback.format_exc())
    finally:
        if q is not None:
            q.close()


_q = mp.Queue(1)
_go = True


def query_tasks_n(batch_size, threshold, work_type, worker_pool, timeout, retry_threshold, q):
    running = []
    wait = 0.25
    while _go:
        eq_sql = None
        try:
            eq_sql = _create_queue(retry_threshold)
            running, tasks = eq_sql.query_more_tasks(work_type, running, batch_size=batch_size,
                                                     threshold=threshold, worker_pool=worker_pool,
                                                     timeout=timeout)
        except Exception:
            if eq_sql is not None:
                eq_sql.logger.error("query_tasks_n error %s", traceback.format_exc())
            running = []
            tasks = [{"type": "status", "payload": "EQ_ABORT"}]
        finally:
            if eq_sql is not None:
                eq_sql.close()
        if tasks:
            wait = 0.25
            if tasks[-1]["type"] == "status":  # a status message goes to Swift on its own
                if len(tasks) > 1:
                    q.put(tasks[:-1])
                q.put([tasks[-1]])
            else:
                q.put(tasks)
        else:
            time.sleep(wait)
            wait = min(wait + 0.25, 20)


def init_task_querier(worker_pool, batch_size, threshold, work_type, timeout=120, retry_threshold=0):
    threading.Thread(target=query_tasks_n, args=(batch_size, threshold, work_type, worker_pool,
                                                 timeout, retry_threshold, _q)).start()


def get_tasks_n(msg_delimiter="|", list_delimiter=";"):
    msgs = []
    for msg in _q.get(True):
        items = [msg["type"], msg["payload"]]
        if msg["type"] == "work":
            items.append(str(msg["eq_task_id"]))
        msgs.append(msg_delimiter.join(items))
    return list_delimiter.join(msgs)


def stop_task_querier():
    global _go
    _go = False
'''

# What Swift/T's loop does with the glue: ask, run the "model" (payload * 2), report, until EQ_STOP.
SWIFT_LOOP = '''
import sys
sys.path.insert(0, sys.argv[1])
import eqsql_swift_glue as glue
from eqflow.compat.eqsql import ABORT_MSG

work_type, mode = int(sys.argv[2]), sys.argv[3]


def handle(msg):
    if msg == ABORT_MSG:
        sys.exit("EQ_ABORT from the glue")
    kind, payload, *rest = msg.split("|")
    if kind == "work":
        status = glue.report_task(int(rest[0]), work_type, str(float(payload) * 2))
        if status != 0:
            sys.exit(f"report_task failed: {status}")
        return False
    if payload == "EQ_STOP":
        return True
    if payload != "EQ_TIMEOUT":
        sys.exit(f"unexpected message {msg!r}")
    return False


if mode == "single":
    while not handle(glue.query_task(work_type, "swift-single", query_timeout=5.0)):
        pass
else:
    glue.init_task_querier("swift-batch", batch_size=4, threshold=1, work_type=work_type, timeout=1)
    stop = False
    while not stop:
        for msg in glue.get_tasks_n().split(";"):
            stop = handle(msg) or stop
    glue.stop_task_querier()
print("swift loop done", flush=True)
'''

# An EQ-SQL-style Python worker pool: single (query_task, timeout=0) or batch (query_more_tasks).
PY_POOL = '''
import os
import sys
import time

from eqflow.compat import eqsql as eq

work_type, mode = int(sys.argv[1]), sys.argv[2]
port = os.getenv("DB_PORT")
eq_sql = eq.init_task_queue(os.getenv("DB_HOST"), os.getenv("DB_USER"), int(port), os.getenv("DB_NAME"),
                            open(os.environ["DB_PASSWORD_F"]).read().strip())


def run(msg):
    """True once the pool must stop."""
    if msg["type"] == "work":
        result = str(float(msg["payload"]) ** 2)
        if eq_sql.report_task(msg["eq_task_id"], work_type, result) != eq.ResultStatus.SUCCESS:
            sys.exit("report failed")
        return False
    if msg["payload"] == eq.EQ_STOP:
        return True
    if msg["payload"] == eq.EQ_ABORT:
        sys.exit("EQ_ABORT")
    time.sleep(0.05)  # EQ_TIMEOUT: ask again
    return False


try:
    if mode == "single":
        while not run(eq_sql.query_task(work_type, worker_pool="py-single", timeout=0)):
            pass
    else:
        running = []
        stop = False
        while not stop:
            running, msgs = eq_sql.query_more_tasks(work_type, running, batch_size=3, threshold=1,
                                                    worker_pool="py-batch", timeout=1)
            for msg in msgs:
                stop = run(msg) or stop
finally:
    eq_sql.close()
'''

CLAIM_AND_HANG = '''
import os
import sys
import time

from eqflow.compat import eqsql as eq

port = os.getenv("DB_PORT")
q = eq.init_task_queue(os.getenv("DB_HOST"), os.getenv("DB_USER"), int(port), os.getenv("DB_NAME"),
                       open(os.environ["DB_PASSWORD_F"]).read().strip())
msg = q.query_task(int(sys.argv[1]), worker_pool="doomed", timeout=30)
q.close()  # as the Swift/T glue does after every call: the task is still being worked on
print(msg["eq_task_id"], flush=True)
time.sleep(600)
'''


@pytest.fixture()
def eq(db_url):
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    q = eqsql.init_task_queue(info["host"], info["user"], int(info["port"]), info["dbname"],
                              password=info["password"])
    yield q
    q.close()


@pytest.fixture()
def db_env(db_url, tmp_path):
    """The DB_* variables EQ-SQL's scripts read, the password in a file (DB_PASSWORD_F)."""
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    pw = tmp_path / "db_password"
    pw.write_text(str(info["password"]) + "\n")
    return {**os.environ, "DB_HOST": str(info["host"]), "DB_USER": str(info["user"]),
            "DB_PORT": str(info["port"]), "DB_NAME": str(info["dbname"]), "DB_PASSWORD_F": str(pw)}


def _script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def _finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"process did not finish: {err[-3000:]}")
    assert proc.returncode == 0, err[-3000:]
    return out


# -- 1. the Swift/T glue: logger, positional password, a queue per call ------------------------

@pytest.mark.parametrize("mode", ["single", "batch"])
def test_swift_t_glue_runs_unchanged(eq, db_env, tmp_path, mode):
    _script(tmp_path, "eqsql_swift_glue.py", SWIFT_GLUE)
    loop = _script(tmp_path, "swift_loop.py", SWIFT_LOOP)
    _, futs = eq.submit_tasks("swift-exp", 3, [str(i) for i in range(12)])
    proc = subprocess.Popen([sys.executable, loop, str(tmp_path), "3", mode], env=db_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        results = {f.eq_task_id: f.result() for f in eq.as_completed(futs, timeout=60)}
        assert sorted(float(r) for s, r in results.values()) == [2.0 * i for i in range(12)]
        assert all(s == ResultStatus.SUCCESS for s, _ in results.values())
        assert eq.stop_worker_pool(3) == ResultStatus.SUCCESS
        assert "swift loop done" in _finish(proc)
    finally:
        proc.kill()
    pools = {p for _, p in eq.get_worker_pools(futs)}
    assert pools == {f"swift-{mode}"}
    assert eq.are_queues_empty()  # every result read, the stop message taken


def test_queue_has_the_logger_and_the_names_eqsql_code_uses(eq):
    assert eq.logger.isEnabledFor(40)  # logger.error(...) is what the glue calls on failure
    eq.logger.debug("a debug line from a port")
    for name in ("EQSQL", "LocalTaskQueue", "TaskQueue", "Future", "LocalFuture", "ABORT_MSG",
                 "ABORT_JSON_MSG", "TimeoutError", "StopConditionException", "init_task_queue"):
        assert hasattr(eqsql, name), name
    assert json.loads(eqsql.ABORT_MSG) == {"type": "status", "payload": EQ_ABORT}


def test_init_task_queue_takes_the_older_positional_form(db_url, monkeypatch):
    """EQ-SQL's older init_task_queue(host, user, port, db_name, retry_threshold, log_level)."""
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    monkeypatch.setenv("PGPASSWORD", str(info["password"]))  # that form takes no password
    q = eqsql.init_task_queue(info["host"], info["user"], int(info["port"]), info["dbname"], 2, 10)
    try:
        assert q.submit_task("e", 0, "x")[0] == ResultStatus.SUCCESS
        assert q.logger.level == 10
    finally:
        q.close()
    with pytest.raises(ValueError, match="password"):
        eqsql.init_task_queue(info["host"], info["user"], int(info["port"]), info["dbname"], 1.5)


# -- the ME and the Python pools -------------------------------------------------------------

@pytest.mark.parametrize("mode", ["single", "batch"])
def test_eqsql_me_with_python_pool_runs_unchanged(eq, db_env, tmp_path, mode):
    pool_script = _script(tmp_path, "pool.py", PY_POOL)
    _, futs = eq.submit_tasks("me-exp", 4, [str(i) for i in range(10)], priority=0)
    status, ids = eq.update_priorities(futs[5:], 5)  # the ME reprioritizes before the pool starts
    assert status == ResultStatus.SUCCESS and sorted(ids) == [f.eq_task_id for f in futs[5:]]
    proc = subprocess.Popen([sys.executable, pool_script, "4", mode], env=db_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        done = []
        remaining = list(futs)
        while remaining:
            fut = eq.pop_completed(remaining, timeout=60)
            status, value = fut.result(timeout=0)
            assert status == ResultStatus.SUCCESS
            done.append((fut, float(value)))
        assert sorted(v for _, v in done) == [float(i * i) for i in range(10)]
        assert eq.stop_worker_pool(4) == ResultStatus.SUCCESS
        _finish(proc)
    finally:
        proc.kill()
    assert [s for _, s in eq.get_status(futs)] == [TaskStatus.COMPLETE] * 10
    assert eq.are_queues_empty(4)


# -- 2. stop_worker_pool stops eqflow's own pools ------------------------------------------------

def test_stop_worker_pool_stops_an_eqflow_pool_run(eq, db_url):
    _, futs = eq.submit_tasks("exp", 7, [json.dumps({"seconds": 0})] * 3)
    eqflow_bin = str(Path(sys.executable).parent / "eqflow")
    pool = subprocess.Popen([eqflow_bin, "pool", "run", "--db", db_url, "--types", "7", "--fn",
                             "eqflow.workers.tasks:sleep", "--workers", "2", "--lease", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert all(f.result(timeout=0)[0] == ResultStatus.SUCCESS for f in eq.as_completed(futs, timeout=60))
        assert eq.stop_worker_pool(7) == ResultStatus.SUCCESS
        _finish(pool)
    finally:
        pool.kill()
    stops = sql(db_url, "SELECT status::text, error FROM tasks WHERE payload = %s", (EQ_STOP,))
    assert stops == [("complete", None)]  # consumed once, never run as a task
    assert sql(db_url, "SELECT status FROM pools") == [("stopped",)]


def test_one_stop_message_stops_one_eqflow_pool(eq, db_url):
    eqflow_bin = str(Path(sys.executable).parent / "eqflow")
    cmd = [eqflow_bin, "pool", "run", "--db", db_url, "--types", "8", "--fn", "eqflow.workers.tasks:noop",
           "--batch-size", "4", "--lease", "4"]
    pools = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        assert wait_for(lambda: len(sql(db_url, "SELECT 1 FROM pools WHERE status = 'running'")) == 2)
        eq.stop_worker_pool(8)
        assert wait_for(lambda: sum(p.poll() is not None for p in pools) == 1, timeout=30)
        _, fut = eq.submit_task("exp", 8, "still served")
        assert fut.result(timeout=30) == (ResultStatus.SUCCESS, "still served")
        eq.stop_worker_pool(8)
        for p in pools:
            _finish(p)
    finally:
        for p in pools:
            p.kill()
    assert sql(db_url, "SELECT count(*) FROM tasks WHERE payload = %s AND status = 'complete'",
               (EQ_STOP,)) == [(2,)]


# -- 3. Future.result looks at least once and keeps what it read ---------------------------------

def test_result_with_timeout_zero_looks_once_and_is_kept(eq):
    _, fut = eq.submit_task("exp", 0, "p")
    msg = eq.query_task(0, timeout=1)
    eq.report_task(msg["eq_task_id"], 0, "done")
    assert fut.result(timeout=0) == (ResultStatus.SUCCESS, "done")
    eq.close()  # a second result() must not need the database
    assert fut.result(timeout=0) == (ResultStatus.SUCCESS, "done")


def test_result_timeout_zero_on_unfinished_task_is_a_timeout(eq):
    _, fut = eq.submit_task("exp", 0, "p")
    assert fut.result(timeout=0) == (ResultStatus.FAILURE, EQ_TIMEOUT)
    assert eq.query_result(fut.eq_task_id, timeout=0) == (ResultStatus.FAILURE, EQ_TIMEOUT)


# -- 4. as_completed on a closed queue yields every future with EQ_ABORT -------------------------

def test_as_completed_after_close_yields_aborts(eq):
    _, futs = eq.submit_tasks("exp", 0, ["a", "b", "c"])
    eq.close()
    got = list(eq.as_completed(futs, timeout=None))
    assert [f.eq_task_id for f in got] == [f.eq_task_id for f in futs]
    for fut in got:
        assert fut.result(timeout=0) == (ResultStatus.FAILURE, EQ_ABORT)
        assert not fut.done() and fut.status is None
    popped = list(futs)
    assert len(list(eq.as_completed(popped, pop=True, n=2))) == 2 and len(popped) == 1


def test_as_completed_when_the_database_is_unreachable_yields_aborts(eq, db_url, admin_url):
    _, futs = eq.submit_tasks("exp", 0, ["a", "b"])
    name = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
    sql(admin_url, f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")  # generated identifier
    sql(admin_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    try:
        got = list(eq.as_completed(futs, timeout=None))  # gives up after the reconnect deadline
        assert [f.eq_task_id for f in got] == [f.eq_task_id for f in futs]
    finally:
        sql(admin_url, f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")
    assert futs[0].result(timeout=0) == (ResultStatus.FAILURE, EQ_TIMEOUT)  # back: looked again


# -- 5. are_queues_empty as EQ-SQL answers it -----------------------------------------------------

def test_are_queues_empty_follows_eqsql_queues(eq):
    assert eq.are_queues_empty()
    _, fut = eq.submit_task("exp", 3, "a")
    assert not eq.are_queues_empty() and not eq.are_queues_empty(3) and eq.are_queues_empty(4)
    msg = eq.query_task(3, timeout=1)
    assert eq.are_queues_empty() and eq.are_queues_empty(3)  # claimed: the output queue is empty
    eq.report_task(msg["eq_task_id"], 3, "r")
    assert not eq.are_queues_empty(3) and eq.are_queues_empty(4)  # reported, not read yet
    assert fut.result() == (ResultStatus.SUCCESS, "r")
    assert eq.are_queues_empty(3)
    eq.stop_worker_pool(3)
    assert not eq.are_queues_empty(3)  # the stop message waits in the output queue
    assert eq.query_task(3, timeout=1) == {"type": "status", "payload": EQ_STOP}
    assert eq.are_queues_empty()


def test_result_read_through_as_completed_counts_as_read(eq):
    _, futs = eq.submit_tasks("exp", 2, ["a", "b"])
    for msg in eq.query_task(2, n=2, timeout=1):
        eq.report_task(msg["eq_task_id"], 2, "r")
    assert not eq.are_queues_empty()
    it = eq.as_completed(futs, timeout=5)
    next(it)
    assert not eq.are_queues_empty()  # one result still unread
    next(it)
    assert eq.are_queues_empty()


def test_clear_queues_cancels_queued_and_drops_unread_results(eq):
    _, futs = eq.submit_tasks("exp", 0, ["a", "b"])
    msg = eq.query_task(0, timeout=1)
    eq.report_task(msg["eq_task_id"], 0, "r")
    eq.clear_queues()
    assert eq.are_queues_empty()
    assert [s for _, s in eq.get_status(futs)] == [TaskStatus.COMPLETE, TaskStatus.CANCELED]


# -- 6. claims are leased and kept alive while the claiming process lives ------------------------

def test_claim_of_a_killed_process_comes_back_within_the_lease(queue, db_url, db_env, tmp_path):
    lease = 3.0  # heartbeats every second: two seconds of slack on a busy machine
    fut = queue.submit("exp", 6, "work")
    script = _script(tmp_path, "claim.py", CLAIM_AND_HANG)
    proc = subprocess.Popen([sys.executable, script, "6"], env={**db_env, "EQFLOW_COMPAT_LEASE_S": str(lease)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert int(proc.stdout.readline()) == fut.task_id
        time.sleep(2 * lease)  # the claiming process lives: its leases are extended
        assert fut.task_id not in queue.rescue_expired()
        assert fut.status.value == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert wait_for(lambda: fut.task_id in queue.rescue_expired(), timeout=10 * lease)
        assert fut.status.value == "queued"
    finally:
        proc.kill()
        proc.wait()


def test_lease_kept_after_close_until_reported(db_url):
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    args = (info["host"], info["user"], int(info["port"]), info["dbname"])
    first = eqsql.init_task_queue(*args, password=info["password"], lease_s=2.0)
    _, fut = first.submit_task("exp", 0, "p")
    msg = first.query_task(0, timeout=1)
    first.close()
    time.sleep(5.0)  # two and a half leases
    second = eqsql.init_task_queue(*args, password=info["password"])
    try:
        assert fut.eq_task_id not in second.queue.rescue_expired()
        assert second.report_task(msg["eq_task_id"], 0, "late but fine") == ResultStatus.SUCCESS
        assert second.query_result(fut.eq_task_id) == (ResultStatus.SUCCESS, "late but fine")
    finally:
        second.close()
