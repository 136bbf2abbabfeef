"""The queue's order in task_queue (migration 0015): one row per queued task, kept in step with tasks.

conftest's db_url checks after every test that task_queue holds exactly the queued tasks; the
tests here drive each way in and out of the queue and say what a reprioritization writes.
"""

from __future__ import annotations

import os
import random
import threading

import pytest

from eqflow import LocalTaskQueue, TaskStatus, UnknownTask
from eqflow.db.migrate import upgrade
from tests.conftest import database_at_schema, queue_out_of_step, sql


def _xmin(url: str, ids: list[int]) -> list[str]:
    return [r[0] for r in sql(url, "SELECT xmin::text FROM tasks WHERE task_id = ANY(%s) ORDER BY task_id", (ids,))]


def test_a_reprioritization_writes_the_queue_row_and_leaves_the_task_row_alone(queue: LocalTaskQueue,
                                                                                db_url: str) -> None:
    ids = [f.task_id for f in queue.submit_many("rp", 1, ["a", "b", "c"], priority=[1, 2, 3])]
    before = _xmin(db_url, ids)
    assert queue.set_priorities(ids, [30, 10, 20]) == ids
    assert _xmin(db_url, ids) == before  # no new version of the wide row
    assert [queue.info(ids)[t].priority for t in ids] == [30, 10, 20]
    assert queue.set_priorities(ids, [30, 11, 20]) == [ids[1]]  # unchanged priorities are not written
    first = queue.claim(1, n=1, pool="p")[0]
    assert (first.task_id, first.priority) == (ids[0], 30)
    # the claim hands the queue's priority to the task row; a release puts it back in the queue
    assert sql(db_url, "SELECT priority FROM tasks WHERE task_id = %s", (ids[0],)) == [(30,)]
    assert queue.release([first]) == {ids[0]}
    assert sql(db_url, "SELECT priority FROM task_queue WHERE task_id = %s", (ids[0],)) == [(30,)]
    assert [t.task_id for t in queue.claim(1, n=3, pool="p")] == [ids[0], ids[2], ids[1]]


def test_every_way_in_and_out_of_the_queue_keeps_task_queue_in_step(queue: LocalTaskQueue, db_url: str) -> None:
    ids = [f.task_id for f in queue.submit_many("io", 2, [str(i) for i in range(8)], priority=list(range(8)),
                                                max_attempts=2)]
    assert queue_out_of_step(db_url) == 0
    held = queue.claim(2, n=4, pool="p")  # the four highest: 7, 6, 5, 4
    assert sorted(t.task_id for t in held) == ids[4:]
    assert queue.report_failure([(held[0], "boom")], retry=True)[held[0].task_id] is TaskStatus.QUEUED
    assert queue.release([held[1]], unstarted=True) == {held[1].task_id}
    sql(db_url, "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE task_id = %s",
        (held[2].task_id,))
    assert queue.rescue_expired() == {held[2].task_id: TaskStatus.QUEUED}
    assert queue.cancel(ids[:2]) == ids[:2]
    assert queue.info(ids[:2])[ids[0]].status is TaskStatus.CANCELED
    assert queue_out_of_step(db_url) == 0
    # back in the queue at the priority each had: the three requeued ones lead again
    again = queue.claim(2, n=8, pool="p")
    assert [t.task_id for t in again] == sorted((held[0].task_id, held[1].task_id, held[2].task_id),
                                                reverse=True) + [ids[3], ids[2]]
    assert queue_out_of_step(db_url) == 0


def test_sql_written_by_hand_keeps_task_queue_in_step(queue: LocalTaskQueue, db_url: str) -> None:
    queue.submit_many("hand", 3, ["a", "b"])
    made = [r[0] for r in sql(db_url, "INSERT INTO tasks (exp_id, task_type, payload, priority) "
                                      "VALUES ('hand', 3, 'c', 9), ('hand', 3, 'd', 8) RETURNING task_id")]
    assert queue_out_of_step(db_url) == 0
    sql(db_url, "UPDATE tasks SET priority = 20 WHERE task_id = %s", (made[1],))  # queued: the order follows
    sql(db_url, "UPDATE tasks SET status = 'canceled', finished_at = now() WHERE task_id = %s", (made[0],))
    assert queue_out_of_step(db_url) == 0
    assert [t.payload for t in queue.claim(3, n=1, pool="p")] == ["d"]
    sql(db_url, "DELETE FROM tasks WHERE payload = 'a'")
    assert queue_out_of_step(db_url) == 0
    assert [t.payload for t in queue.claim(3, n=5, pool="p")] == ["b"]
    queue.submit_many("hand", 3, ["e"])
    sql(db_url, "TRUNCATE tasks CASCADE")
    assert sql(db_url, "SELECT count(*) FROM task_queue") == [(0,)]


def test_unknown_ids_raise_and_roll_the_whole_call_back(queue: LocalTaskQueue, db_url: str) -> None:
    ids = [f.task_id for f in queue.submit_many("unk", 1, ["a", "b", "c"])]
    running = queue.claim(1, n=1, pool="p")[0].task_id  # known, not queued: not changed, not unknown
    queued = [t for t in ids if t != running]
    with pytest.raises(UnknownTask) as err:
        queue.set_priorities(ids + [10**12, 10**12 + 1], [5, 5, 5, 5, 5])
    assert err.value.task_ids == [10**12, 10**12 + 1]
    with pytest.raises(UnknownTask) as err:
        queue.cancel([10**12 + 2, *queued])
    assert err.value.task_ids == [10**12 + 2]
    assert {t: (i.status, i.priority) for t, i in queue.info(queued).items()} == {
        t: (TaskStatus.QUEUED, 0) for t in queued}
    assert queue.set_priorities(ids, 7) == queued  # the running task is known: no error, not changed
    assert queue.cancel(ids) == queued
    assert queue_out_of_step(db_url) == 0


def test_claims_and_cancels_racing_never_deadlock_or_share_a_task(db_url: str) -> None:
    """Every writer takes a queued task's task_queue row before its tasks row (0015)."""
    setup = LocalTaskQueue(db_url, migrate=False)
    ids = [f.task_id for f in setup.submit_many("race", 5, ["x"] * 600,
                                                priority=[random.randrange(50) for _ in range(600)])]
    claimed: list[int] = []
    canceled: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def claimer() -> None:
        q = LocalTaskQueue(db_url, migrate=False)
        try:
            while got := q.claim(5, n=3, pool="race"):
                with lock:
                    claimed.extend(t.task_id for t in got)
        except BaseException as exc:  # noqa: BLE001 - any error fails the test below
            errors.append(exc)
        finally:
            q.close()

    def canceler(seed: int) -> None:
        q = LocalTaskQueue(db_url, migrate=False)
        rng = random.Random(seed)
        try:
            for _ in range(40):
                some = rng.sample(ids, 25)
                with lock:
                    canceled.extend(q.cancel(some))
                q.set_priorities(rng.sample(ids, 25), rng.randrange(50))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            q.close()

    threads = [threading.Thread(target=claimer) for _ in range(3)]
    threads += [threading.Thread(target=canceler, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # a claimer stops when every row left is locked by a cancel: what is left is claimed here
    while rest := setup.claim(5, n=100, pool="race"):
        claimed.extend(t.task_id for t in rest)
    setup.close()
    assert not errors, errors
    assert len(claimed) == len(set(claimed)) and len(canceled) == len(set(canceled))
    assert not set(claimed) & set(canceled)
    assert set(claimed) | set(canceled) == set(ids)
    assert queue_out_of_step(db_url) == 0


def test_the_migration_moves_the_queued_tasks_into_task_queue(admin_url: str) -> None:
    """A database at schema 14 with queued, running and finished tasks, upgraded to 15."""
    with database_at_schema(admin_url, f"eqflow_queue_mig_{os.getpid()}", 15) as url:
        # rows as schema 14 left them (its own claim: the function of 0014)
        sql(url, "INSERT INTO tasks (exp_id, task_type, payload, priority) "
                 "SELECT 'old', 1, 'p' || g, g %% 5 FROM generate_series(1, 10) g")
        held = sql(url, "SELECT task_id FROM eqflow_report_and_claim('{}', '{}', '{}', '{1}', 2, 'p', 60) "
                        "WHERE claimed")
        assert upgrade(url) == [15]
        assert queue_out_of_step(url) == 0
        assert sql(url, "SELECT count(*) FROM task_queue") == [(8,)]
        with LocalTaskQueue(url, migrate=False) as q:
            got = q.claim(1, n=10, pool="p")
            assert [t.priority for t in got] == sorted((t.priority for t in got), reverse=True)
            assert len(got) == 8 and not {t.task_id for t in got} & {h[0] for h in held}
