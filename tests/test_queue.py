"""LocalTaskQueue behaviour on a real database."""

import threading
import time

import pytest

from eqflow import LocalTaskQueue, StopMode, TaskCanceled, TaskFailed, TaskStatus, as_completed, pop_completed
from tests.conftest import sql


def test_submit_claim_report_result(queue):
    fut = queue.submit("exp", 1, '{"x": 1}', tag="t")
    assert fut.status is TaskStatus.QUEUED and not fut.done()
    [task] = queue.claim(1, pool="p")
    assert (task.task_id, task.payload, task.tag, task.attempt) == (fut.task_id, '{"x": 1}', "t", 1)
    assert fut.status is TaskStatus.RUNNING and fut.worker_pool == "p"
    assert queue.report([(task, "42")]) == {task.task_id}
    assert fut.result(timeout=5) == "42" and fut.done()
    info = queue.info([fut])[fut.task_id]
    assert info.started_at <= info.finished_at and info.attempts == 1


def test_claim_order_is_priority_then_fifo(queue):
    futs = queue.submit_many("exp", 1, [str(i) for i in range(6)], priority=[0, 5, 5, 1, 9, 0])
    order = [t.task_id for t in queue.claim(1, n=6, pool="p")]
    expected = [futs[i].task_id for i in (4, 1, 2, 3, 0, 5)]
    assert order == expected


def test_claim_only_takes_its_types_and_n(queue):
    queue.submit_many("exp", 1, ["a", "b", "c"])
    queue.submit_many("exp", 2, ["d"], priority=10)
    assert [t.payload for t in queue.claim(1, n=2, pool="p")] == ["a", "b"]
    assert [t.payload for t in queue.claim([1, 2], n=5, pool="p")] == ["d", "c"]
    assert queue.claim([1, 2], n=5, pool="p") == []


def test_claim_waits_for_work_and_is_woken_by_notification(queue):
    got = []

    def worker():
        got.extend(queue.claim(7, n=1, pool="p", timeout=10))

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    queue.submit("exp", 7, "late")
    thread.join(timeout=10)
    assert [t.payload for t in got] == ["late"]
    assert time.monotonic() - t0 < 0.9  # well under the 1 s safety poll: woken, not polled


def test_claim_timeout_returns_empty(queue):
    t0 = time.monotonic()
    assert queue.claim(3, timeout=0.3) == []
    assert 0.25 < time.monotonic() - t0 < 2


def test_report_is_idempotent_and_only_from_the_lease_holder(queue):
    fut = queue.submit("exp", 1, "p")
    [task] = queue.claim(1, pool="a")
    assert queue.report([(task, "one")]) == {task.task_id}
    assert queue.report([(task, "two")]) == set()  # duplicate: no change
    assert fut.result(timeout=1) == "one"


def test_release_returns_tasks_unrun(queue):
    fut = queue.submit("exp", 1, "p")
    [task] = queue.claim(1, pool="a")
    assert queue.release([task]) == {task.task_id}
    assert fut.status is TaskStatus.QUEUED
    [again] = queue.claim(1, pool="b")
    assert again.attempt == 2 and again.claim_id != task.claim_id  # the released run counts
    assert queue.report([(task, "stale")]) == set()
    assert queue.release([again], unstarted=True) == {again.task_id}  # never started: not a run
    [third] = queue.claim(1, pool="c")
    assert third.attempt == 2
    assert queue.report([(again, "stale")]) == set()
    assert queue.report([(third, "fresh")]) == {third.task_id}
    assert queue.info([fut])[fut.task_id].attempts == 2


def test_released_runs_are_counted_but_are_not_failures(queue, db_url):
    fut = queue.submit("exp", 1, "p", max_attempts=2)
    for _ in range(3):  # three pools stop mid-run: three runs, no failure
        [task] = queue.claim(1, pool="a")
        queue.release([task])
    [task] = queue.claim(1, pool="a")
    assert task.attempt == 4
    assert queue.report_failure([(task, "boom")]) == {task.task_id: TaskStatus.QUEUED}  # failure 1 of 2
    [task] = queue.claim(1, pool="a")
    assert queue.report_failure([(task, "boom")]) == {task.task_id: TaskStatus.FAILED}  # 2 of 2
    assert sql(db_url, "SELECT attempts, failures FROM tasks WHERE task_id = %s", (fut.task_id,)) == [(5, 2)]


def test_failures_retry_until_max_attempts_then_fail_with_error(queue):
    fut = queue.submit("exp", 1, "p", max_attempts=2)
    [first] = queue.claim(1, pool="a")
    assert queue.report_failure([(first, "boom 1")]) == {fut.task_id: TaskStatus.QUEUED}
    [second] = queue.claim(1, pool="a")
    assert second.attempt == 2
    assert queue.report_failure([(second, "boom 2")]) == {fut.task_id: TaskStatus.FAILED}
    with pytest.raises(TaskFailed, match="boom 2"):
        fut.result(timeout=1)
    assert fut.exception() == "boom 2"


def test_reprioritize_many_in_one_call_only_touches_queued(queue):
    futs = queue.submit_many("exp", 1, [str(i) for i in range(5)])
    [running] = queue.claim(1, pool="p")  # futs[0]
    changed = queue.set_priorities(futs, [10, 20, 30, 40, 50])
    assert changed == sorted(f.task_id for f in futs[1:])
    assert [f.priority for f in futs] == [0, 20, 30, 40, 50]
    assert queue.set_priorities(futs[1:3], 99) == [futs[1].task_id, futs[2].task_id]
    order = [t.payload for t in queue.claim(1, n=4, pool="p")]
    assert order == ["1", "2", "4", "3"]
    assert running.task_id == futs[0].task_id


def test_future_priority_setter(queue):
    fut = queue.submit("exp", 1, "p")
    fut.priority = 7
    assert fut.priority == 7


def test_cancel_only_queued(queue):
    futs = queue.submit_many("exp", 1, ["a", "b", "c"])
    queue.claim(1, pool="p")
    assert queue.cancel(futs) == [futs[1].task_id, futs[2].task_id]
    assert futs[1].status is TaskStatus.CANCELED and futs[1].cancel()
    assert not futs[0].cancel()
    with pytest.raises(TaskCanceled):
        futs[2].result(timeout=1)


def test_as_completed_yields_in_completion_order_with_n_and_batches(queue):
    futs = queue.submit_many("exp", 1, [str(i) for i in range(6)])
    tasks = queue.claim(1, n=6, pool="p")
    queue.report([(tasks[3], "r3"), (tasks[1], "r1")])
    first = list(as_completed(futs, n=2, timeout=5))
    assert sorted(f.task_id for f in first) == sorted([tasks[1].task_id, tasks[3].task_id])
    queue.report([(t, "r") for t in tasks])
    batches = []
    gen = as_completed(futs, batch_size=4, timeout=5)
    batches = list(gen)
    assert len(batches) == 6 and {f.task_id for f in batches} == {f.task_id for f in futs}


def test_as_completed_pop_and_timeout(queue):
    futs = queue.submit_many("exp", 1, ["a", "b"])
    [task] = queue.claim(1, n=1, pool="p")
    queue.report([(task, "done")])
    done = pop_completed(futs, timeout=5)
    assert done.task_id == task.task_id and len(futs) == 1
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        list(as_completed(futs, timeout=0.3))
    assert time.monotonic() - t0 < 2


def test_as_completed_is_woken_by_completions_from_another_connection(queue, db_url):
    futs = queue.submit_many("exp", 1, [str(i) for i in range(50)])
    other = LocalTaskQueue(db_url, migrate=False)

    def worker():
        while True:
            tasks = other.claim(1, n=7, pool="w", timeout=0.5)
            if not tasks:
                return
            other.report([(t, t.payload + "!") for t in tasks])

    thread = threading.Thread(target=worker)
    thread.start()
    results = {f.task_id: f.result() for f in as_completed(futs, timeout=20)}
    thread.join()
    other.close()
    assert sorted(results.values()) == sorted(f"{i}!" for i in range(50))


def test_as_completed_query_count_does_not_grow_with_futures(queue):
    """One query per wake-up for the whole set, not one per future."""
    futs = queue.submit_many("exp", 1, ["x"] * 500)
    tasks = queue.claim(1, n=500, pool="p")
    queue.report([(t, "r") for t in tasks])
    calls = []
    original = queue._finished_among
    queue._finished_among = lambda ids: calls.append(len(ids)) or original(ids)  # count round trips
    assert len(list(as_completed(futs, timeout=5))) == 500
    assert calls == [500]


def test_stats_and_open_count(queue):
    queue.submit_many("a", 1, ["x", "y"])
    queue.submit_many("b", 2, ["z"])
    queue.claim(1, pool="p")
    assert queue.stats() == {1: {"queued": 1, "running": 1}, 2: {"queued": 1}}
    assert queue.stats("b") == {2: {"queued": 1}}
    assert queue.open_count() == 3 and queue.open_count(2) == 1


def test_reattach_after_restart(queue, db_url):
    futs = queue.submit_many("resume-me", 1, ["a", "b", "c"], tag=["t1", "t2", "t3"])
    [task] = queue.claim(1, pool="p")
    queue.report([(task, "ra")])
    queue.close()
    fresh = LocalTaskQueue(db_url, migrate=False)
    again = fresh.experiment_futures("resume-me")
    assert [f.task_id for f in again] == [f.task_id for f in futs]
    assert [f.tag for f in again] == ["t1", "t2", "t3"]
    assert again[0].done() and again[0].result() == "ra"
    assert [f.status for f in again[1:]] == [TaskStatus.QUEUED] * 2
    fresh.close()


def test_stop_pools_of_a_type(queue):
    drain = queue.register_pool("p1", [1, 2])
    other = queue.register_pool("p2", [3])
    assert queue.pool_heartbeat(drain) is None
    assert queue.stop_pools(2, StopMode.NOW) == ["p1"]
    assert queue.pool_heartbeat(drain) is StopMode.NOW
    assert queue.pool_heartbeat(other) is None
    queue.pool_stopped(drain)
    assert [p.name for p in queue.pools(active_only=True)] == ["p2"]


def test_idempotency_key_makes_a_repeated_submit_return_the_same_tasks(queue, db_url):
    first = queue.submit_many("idem", 1, ["a", "b"], idempotency_key="k-1")
    again = queue.submit_many("idem", 1, ["a", "b"], idempotency_key="k-1")
    assert [f.task_id for f in again] == [f.task_id for f in first]
    other = queue.submit_many("idem", 1, ["a", "b"], idempotency_key="k-2")
    assert {f.task_id for f in other}.isdisjoint(f.task_id for f in first)
    assert queue.stats("idem") == {1: {"queued": 4}}
    import pytest as _pytest

    from eqflow import InvalidInput

    with _pytest.raises(InvalidInput, match="used before for another submission .2 tasks"):
        queue.submit_many("idem", 1, ["a"], idempotency_key="k-1")
    with _pytest.raises(InvalidInput, match="another experiment"):  # same size, other exp_id: not its tasks
        queue.submit_many("idem-other", 1, ["a", "b"], idempotency_key="k-1")
    assert queue.stats("idem-other") == {}
