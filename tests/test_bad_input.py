"""Bad input gets a clear exception and writes nothing."""

import pytest

from eqflow import InvalidInput, LocalTaskQueue, PayloadTooLarge, UnknownTask
from tests.conftest import sql


def count_tasks(url):
    return sql(url, "SELECT count(*) FROM tasks")[0][0]


@pytest.mark.parametrize("payload", [1, None, b"bytes", {"a": 1}, ["x"]])
def test_non_string_payloads_are_refused(queue, db_url, payload):
    with pytest.raises(InvalidInput, match="payload must be a str"):
        queue.submit("exp", 1, payload)
    with pytest.raises(InvalidInput):
        queue.submit_many("exp", 1, ["fine", payload])  # one bad item: nothing written
    assert count_tasks(db_url) == 0


@pytest.mark.parametrize("exp_id", ["", 5, None, "x" * 201, "a\x00b"])
def test_bad_exp_ids(queue, db_url, exp_id):
    with pytest.raises(InvalidInput, match="exp_id"):
        queue.submit(exp_id, 1, "p")
    assert count_tasks(db_url) == 0


@pytest.mark.parametrize("task_type", ["1", 1.0, True, 2**40])
def test_bad_task_types(queue, task_type):
    with pytest.raises(InvalidInput, match="task_type"):
        queue.submit("exp", task_type, "p")


def test_priority_out_of_range_or_mismatched(queue, db_url):
    with pytest.raises(InvalidInput, match="32 bits"):
        queue.submit("exp", 1, "p", priority=2**31)
    with pytest.raises(InvalidInput, match="2 values given for 3 tasks"):
        queue.submit_many("exp", 1, ["a", "b", "c"], priority=[1, 2])
    assert count_tasks(db_url) == 0


@pytest.mark.parametrize("n", [0, -1, 10**6, "3", 2.5, None])
def test_bad_batch_sizes(queue, n):
    queue.submit("exp", 1, "p")
    with pytest.raises(InvalidInput, match="n must be"):
        queue.claim(1, n=n)


def test_negative_timeout_is_refused(queue):
    with pytest.raises(InvalidInput, match="timeout"):
        queue.claim(1, timeout=-1)


def test_sql_metacharacters_round_trip_untouched(queue, db_url):
    nasty = "x'); DROP TABLE tasks; -- \\ % %s %(a)s $1 \"q\""
    fut = queue.submit(nasty, 1, nasty, tag=nasty)
    [task] = queue.claim(1, pool=nasty)
    assert (task.exp_id, task.payload, task.tag, task.pool) == (nasty, nasty, nasty, nasty)
    queue.report([(task, nasty)])
    assert fut.result(timeout=2) == nasty
    assert queue.stats(nasty) == {1: {"complete": 1}}
    assert count_tasks(db_url) == 1


def test_payload_over_limit_writes_nothing(db_url):
    q = LocalTaskQueue(db_url, migrate=False, max_payload_bytes=1000)
    try:
        with pytest.raises(PayloadTooLarge, match="over the limit of 1000"):
            q.submit_many("exp", 1, ["small", "é" * 600])  # 1200 bytes in UTF-8
        assert count_tasks(db_url) == 0
        fut = q.submit("exp", 1, "é" * 500)
        [task] = q.claim(1, pool="p")
        with pytest.raises(PayloadTooLarge):
            q.report([(task, "x" * 1001)])
        assert fut.status.value == "running"
    finally:
        q.close()


def test_nul_characters_are_refused(queue, db_url):
    with pytest.raises(InvalidInput, match="NUL"):
        queue.submit("exp", 1, "a\x00b")
    assert count_tasks(db_url) == 0


def test_unknown_task_ids_change_nothing(queue, db_url):
    futs = queue.submit_many("exp", 1, ["a", "b"])
    ids = [f.task_id for f in futs]
    with pytest.raises(UnknownTask, match="987654"):
        queue.cancel(ids + [987654])
    with pytest.raises(UnknownTask):
        queue.set_priorities(ids + [987654], 5)
    with pytest.raises(UnknownTask):
        queue.set_priorities(ids + [987654], [5, 6, 7])
    with pytest.raises(UnknownTask):
        queue.info([987654])
    rows = sql(db_url, "SELECT status::text, priority FROM tasks ORDER BY task_id")
    assert rows == [("queued", 0), ("queued", 0)]
    # a queued task's priority is task_queue's (migration 0015): unchanged there too
    assert [i.priority for i in queue.info(ids).values()] == [0, 0]


def test_wrong_id_types(queue):
    with pytest.raises(InvalidInput, match="task ids must be ints"):
        queue.cancel(["1"])


def test_report_needs_claimed_tasks(queue):
    with pytest.raises(InvalidInput, match="ClaimedTask"):
        queue.report([(1, "x")])


def test_bad_database_url_is_a_clear_config_error():
    from eqflow import ConfigError

    with pytest.raises(ConfigError, match="postgresql://") as info:
        LocalTaskQueue("mysql://root:secret@host/db")
    assert "secret" not in str(info.value)


def test_dead_database_raises_database_unavailable():
    from eqflow import DatabaseUnavailable
    from eqflow.db.embedded import free_port

    url = f"postgresql://nobody:pw@127.0.0.1:{free_port()}/none"
    q = LocalTaskQueue(url, migrate=False, reconnect_timeout=1.0)
    try:
        with pytest.raises(DatabaseUnavailable, match="no database connection within"):
            q.submit("exp", 1, "p")
    finally:
        q.close()
