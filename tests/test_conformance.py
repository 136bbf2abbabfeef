"""One conformance suite, three transports: LocalTaskQueue, ServiceTaskQueue (through a real
uvicorn server) and GCTaskQueue (through a local executor standing in for Globus Compute)."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from eqflow import InvalidInput, LocalTaskQueue, StopMode, TaskStatus, UnknownTask, as_completed
from eqflow.gc_queue import GCTaskQueue
from eqflow.service_queue import ServiceTaskQueue
from tests.conftest import sql
from tests.service_fixtures import TOKEN, ServiceProcess


@pytest.fixture(params=["local", "service", "globus"])
def tq(request, db_url):
    if request.param == "local":
        queue = LocalTaskQueue(db_url, migrate=False, safety_poll_s=1.0)
        yield queue
        queue.close()
    elif request.param == "service":
        service = ServiceProcess(db_url).start()
        queue = ServiceTaskQueue(service.url, TOKEN)
        yield queue
        queue.close()
        service.cleanup()
    else:
        with ThreadPoolExecutor(8) as executor:
            queue = GCTaskQueue(executor, db_url)
            yield queue
            queue.close()


def test_submit_claim_report_result(tq):
    futs = tq.submit_many("conf", 1, ['{"a": 1}', '{"a": 2}'], priority=[1, 5], tag="t")
    tasks = tq.claim(1, n=5, pool="p")
    assert [t.payload for t in tasks] == ['{"a": 2}', '{"a": 1}']
    assert tq.report([(t, "r" + t.payload) for t in tasks]) == {t.task_id for t in tasks}
    assert sorted(f.result(timeout=10) for f in futs) == ['r{"a": 1}', 'r{"a": 2}']
    assert futs[0].worker_pool == "p" and futs[0].tag == "t"


def test_claim_waits_for_work(tq):
    got = []
    thread = threading.Thread(target=lambda: got.extend(tq.claim(2, timeout=15, pool="w")))
    thread.start()
    fut = tq.submit("conf", 2, "late")
    thread.join(timeout=20)
    assert [t.task_id for t in got] == [fut.task_id]


def test_as_completed_with_n_and_batch(tq):
    futs = tq.submit_many("conf", 3, [str(i) for i in range(6)])

    def worker():
        for task in tq.claim(3, n=6, pool="w", timeout=5):
            tq.report([(task, task.payload)])

    reporter = threading.Thread(target=worker)
    reporter.start()
    first = list(as_completed(futs, n=2, timeout=20))
    assert len(first) == 2
    rest = list(as_completed(futs, batch_size=3, timeout=20))
    assert sorted(f.result() for f in rest) == [str(i) for i in range(6)]
    reporter.join(timeout=30)  # its last answer may still be on the way: not after the queue closes


def test_failure_retries_then_fails(tq):
    fut = tq.submit("conf", 4, "x", max_attempts=2)
    for expected in (TaskStatus.QUEUED, TaskStatus.FAILED):
        [task] = tq.claim(4, pool="p")
        assert tq.report_failure([(task, "boom")]) == {fut.task_id: expected}
    assert fut.status is TaskStatus.FAILED and fut.exception() == "boom"


def test_priorities_and_cancel(tq):
    futs = tq.submit_many("conf", 5, ["a", "b", "c"])
    assert tq.set_priorities(futs, [1, 3, 2]) == sorted(f.task_id for f in futs)
    assert [f.priority for f in futs] == [1, 3, 2]
    assert tq.cancel(futs[:1]) == [futs[0].task_id]
    assert [t.payload for t in tq.claim(5, n=3, pool="p")] == ["b", "c"]
    assert futs[0].status is TaskStatus.CANCELED


def test_stats_reattach_and_leases(tq):
    futs = tq.submit_many("conf-re", 6, ["a", "b"])
    [task] = tq.claim(6, pool="p")
    assert tq.extend_leases([task]) == {task.task_id}
    assert tq.release([task]) == {task.task_id}
    assert tq.stats("conf-re") == {6: {"queued": 2}}
    assert tq.open_count(6) == 2
    again = tq.experiment_futures("conf-re")
    assert [f.task_id for f in again] == [f.task_id for f in futs]


def test_experiment_status_and_event_log(tq, db_url):
    assert tq.experiment_status("conf-ev") is None
    first = tq.record_event("conf-ev", "retrain", {"retrain": 1, "points": 25})
    tq.record_event("conf-ev", "pool_started", {"pool": "p-1"})
    tq.record_event("conf-other", "retrain", {})
    events = tq.events("conf-ev")
    assert [(e.kind, e.data) for e in events] == [("retrain", {"retrain": 1, "points": 25}),
                                                  ("pool_started", {"pool": "p-1"})]
    assert events[0].event_id == first.event_id and events[0].at <= events[1].at
    assert [e.kind for e in tq.events("conf-ev", kind="pool_started")] == ["pool_started"]
    tq.set_experiment_status("conf-ev", "finished")
    assert tq.experiment_status("conf-ev") == "finished"
    before = sql(db_url, "SELECT count(*) FROM experiment_events")
    with pytest.raises(InvalidInput):
        tq.record_event("conf-ev", "bad", {"x": float("nan")})
    with pytest.raises(InvalidInput):
        tq.record_event("conf-ev", "", {})
    assert sql(db_url, "SELECT count(*) FROM experiment_events") == before  # bad input wrote nothing


def test_stop_pools(tq, db_url):
    local = LocalTaskQueue(db_url, migrate=False)
    pool_id = local.register_pool("conf-pool", [7])
    assert tq.stop_pools(7, StopMode.NOW) == ["conf-pool"]
    assert local.pool_heartbeat(pool_id) is StopMode.NOW
    assert [p.name for p in tq.pools(active_only=True)] == ["conf-pool"]
    local.close()


def test_errors_are_the_same_exceptions(tq):
    with pytest.raises(UnknownTask):
        tq.cancel([987654321])
    with pytest.raises(UnknownTask):
        tq.info([987654321])
    with pytest.raises(InvalidInput):
        tq.submit("conf", 8, 42)
    with pytest.raises(InvalidInput):
        tq.claim(8, n=0)
    fut = tq.submit("conf", 8, json.dumps({"ok": True}))
    assert fut.status is TaskStatus.QUEUED


def test_task_queues_config_picks_the_transport(db_url):
    from eqflow.errors import ConfigError
    from eqflow.remote import RemoteTaskQueue
    from eqflow.task_queues import make_task_queue

    local = make_task_queue("q", {"type": "local", "db": db_url})
    assert isinstance(local, LocalTaskQueue)
    local.close()
    service = ServiceProcess(db_url).start()
    try:
        remote = make_task_queue("q", {"type": "service", "url": service.url, "token": TOKEN})
        assert isinstance(remote, ServiceTaskQueue) and remote.open_count() == 0
        remote.close()
    finally:
        service.cleanup()
    with ThreadPoolExecutor(2) as executor:
        gc = make_task_queue("q", {"type": "globus", "executor": executor, "db": db_url})
        assert isinstance(gc, RemoteTaskQueue) and gc.open_count() == 0
    for entry, message in [({"type": "kafka"}, "expected local, service or globus"),
                           ({"type": "local", "dbs": 1}, "unknown key"),
                           ({"type": "service"}, "needs url or tunnel"),
                           ({"type": "service", "tunnel": {"host": "x"}}, "needs at least host and remote_port")]:
        with pytest.raises(ConfigError, match=message):
            make_task_queue("q", entry)
