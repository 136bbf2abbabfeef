"""The EQ-SQL scenarios, through eqflow.compat.eqsql, behave as EQ-SQL documents them."""

import threading

import psycopg
import pytest

from eqflow.compat import eqsql
from eqflow.compat.eqsql import EQ_STOP, EQ_TIMEOUT, ResultStatus, TaskStatus


@pytest.fixture()
def eq(db_url):
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    queue = eqsql.init_task_queue(info["host"], info["user"], int(info["port"]), info["dbname"],
                                  password=info["password"])
    yield queue
    queue.close()


def test_submit_query_report_result(eq):
    status, fut = eq.submit_task("exp", 0, '{"x": 1}')
    assert status == ResultStatus.SUCCESS and fut.eq_task_id > 0
    assert fut.status == TaskStatus.QUEUED
    assert fut.result(timeout=0.1) == (ResultStatus.FAILURE, EQ_TIMEOUT)
    msg = eq.query_task(0, worker_pool="pool-a", timeout=1)
    assert msg == {"type": "work", "eq_task_id": fut.eq_task_id, "payload": '{"x": 1}'}
    assert fut.status == TaskStatus.RUNNING and fut.worker_pool == "pool-a"
    assert eq.report_task(fut.eq_task_id, 0, "result!") == ResultStatus.SUCCESS
    assert fut.result() == (ResultStatus.SUCCESS, "result!")
    assert fut.done() and fut.status == TaskStatus.COMPLETE
    assert eq.query_result(fut.eq_task_id) == (ResultStatus.SUCCESS, "result!")


def test_query_task_timeout_and_batches(eq):
    assert eq.query_task(5, timeout=0.2) == {"type": "status", "payload": EQ_TIMEOUT}
    _, futs = eq.submit_tasks("exp", 5, [str(i) for i in range(4)], priority=1)
    msgs = eq.query_task(5, n=3, timeout=1)
    assert [m["payload"] for m in msgs] == ["0", "1", "2"]


def test_priorities(eq):
    _, futs = eq.submit_tasks("exp", 0, ["a", "b", "c"])
    status, ids = eq.update_priorities(futs, [1, 3, 2])
    assert status == ResultStatus.SUCCESS and sorted(ids) == sorted(f.eq_task_id for f in futs)
    assert [p for _, p in eq.get_priorities(futs)] == [1, 3, 2]
    assert eq.query_task(0, timeout=1)["payload"] == "b"
    futs[0].priority = 10
    assert futs[0].priority == 10
    assert eq.update_priorities(futs, 4)[0] == ResultStatus.SUCCESS
    assert [p for _, p in eq.get_priorities(futs)] == [4, 3, 4]  # the running task kept its own


def test_query_more_tasks_keeps_batch_size_in_hand(eq):
    eq.submit_tasks("exp", 0, [str(i) for i in range(10)])
    running, msgs = eq.query_more_tasks(0, [], batch_size=4, threshold=2, timeout=1)
    assert len(running) == 4 and len(msgs) == 4
    eq.report_task(running[0], 0, "r")
    running2, msgs2 = eq.query_more_tasks(0, running, batch_size=4, threshold=2, timeout=1)
    assert running2 == running[1:] and msgs2 == []  # 1 free slot < threshold 2
    eq.report_task(running[1], 0, "r")
    running3, msgs3 = eq.query_more_tasks(0, running2, batch_size=4, threshold=2, timeout=1)
    assert len(running3) == 4 and len(msgs3) == 2
    with pytest.raises(ValueError, match="threshold"):
        eq.query_more_tasks(0, [], batch_size=2, threshold=3)


def test_as_completed_n_batch_size_and_timeout(eq):
    _, futs = eq.submit_tasks("exp", 0, [str(i) for i in range(6)])
    msgs = eq.query_task(0, n=6, timeout=1)
    for m in msgs[:4]:
        eq.report_task(m["eq_task_id"], 0, "r" + m["payload"])
    got = list(eq.as_completed(futs, n=3, timeout=5))
    assert len(got) == 3
    popped = list(futs)
    batch = list(eq.as_completed(popped, pop=True, batch_size=2, n=4, timeout=5))
    assert len(batch) == 4 and len(popped) == 2
    with pytest.raises(eqsql.TimeoutError):
        list(eq.as_completed(popped, timeout=0.3))
    eq.report_task(msgs[4]["eq_task_id"], 0, "r4")
    assert eq.pop_completed(popped, timeout=5).eq_task_id == msgs[4]["eq_task_id"]


def test_cancel_and_status(eq):
    _, futs = eq.submit_tasks("exp", 0, ["a", "b"])
    eq.query_task(0, timeout=1)
    status, ids = eq.cancel_tasks(futs)
    assert status == ResultStatus.SUCCESS and ids == [futs[1].eq_task_id]
    assert [s for _, s in eq.get_status(futs)] == [TaskStatus.RUNNING, TaskStatus.CANCELED]
    assert futs[1].cancel() and not futs[0].cancel()
    assert futs[1].done()


def test_stop_worker_pool_reaches_one_pool_after_the_work(eq):
    eq.submit_tasks("exp", 0, ["w1", "w2"])
    assert eq.stop_worker_pool(0) == ResultStatus.SUCCESS
    seen = []
    while True:
        msg = eq.query_task(0, timeout=1)
        if msg["type"] == "status":
            seen.append(msg["payload"])
            break
        seen.append(msg["payload"])
        eq.report_task(msg["eq_task_id"], 0, "ok")
    assert seen == ["w1", "w2", EQ_STOP]
    assert eq.query_task(0, timeout=0.1) == {"type": "status", "payload": EQ_TIMEOUT}


def test_queues_empty_and_clear(eq):
    assert eq.are_queues_empty()
    eq.submit_tasks("exp", 3, ["a"])
    assert not eq.are_queues_empty() and not eq.are_queues_empty(3) and eq.are_queues_empty(4)
    eq.clear_queues()
    assert eq.are_queues_empty()


def test_bad_input_is_a_failure_status_not_an_exception(eq):
    assert eq.submit_task("exp", 0, 123) == (ResultStatus.FAILURE, None)
    assert eq.update_priorities([], 1) == (ResultStatus.SUCCESS, [])


def test_python_worker_pool_loop_runs_unchanged(eq):
    """The EQ-SQL worker-pool pattern: query_task until EQ_STOP, report each result."""
    _, futs = eq.submit_tasks("exp", 0, [str(i) for i in range(20)])

    def pool():
        while True:
            msg = eq.query_task(0, worker_pool="py-pool", timeout=5)
            if msg["type"] == "status" and msg["payload"] == EQ_STOP:
                return
            if msg["type"] == "work":
                eq.report_task(msg["eq_task_id"], 0, str(int(msg["payload"]) ** 2))

    thread = threading.Thread(target=pool)
    thread.start()
    results = sorted(int(f.result(timeout=10)[1]) for f in eq.as_completed(futs, timeout=20))
    eq.stop_worker_pool(0)
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert results == sorted(i * i for i in range(20))
