"""Short tasks go to workers a few at a time (prefetch); long ones one at a time. Real worker
processes throughout: a worker that dies or times out with tasks waiting behind the running one
fails that one only and hands the others back unstarted."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import deque

import pytest

from eqflow.models import ClaimedTask
from eqflow.workers.pool import PoolConfig, _ProcessRunner
from eqflow.workers.slots import TaskSpec


def tasks(payloads: list[str], start: int = 1) -> deque[ClaimedTask]:
    return deque(ClaimedTask(start + i, "prefetch", 1, 0, p, None, 1, start + i, "test")
                 for i, p in enumerate(payloads))


def sleep_for(seconds: float) -> str:
    return json.dumps({"seconds": seconds})


def collect_all(runner: _ProcessRunner, n: int, timeout: float = 30) -> list[tuple[ClaimedTask, bool, str]]:
    out: list[tuple[ClaimedTask, bool, str]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += runner.collect(0.1)
    return out


@pytest.fixture
def runner():
    cfg = PoolConfig([1], TaskSpec(fn="eqflow.workers.tasks:sleep"), n_workers=2, batch_size=16, task_timeout_s=3)
    made = _ProcessRunner(cfg)
    yield made
    made.close()


def test_short_tasks_go_several_per_worker_and_each_is_reported_once_in_order(runner):
    waiting = tasks([sleep_for(0)] * 2)
    runner.dispatch(waiting)  # the task time is unknown yet: one per worker
    assert [len(s.tasks) for s in runner.slots] == [1, 1] and not waiting
    assert len(collect_all(runner, 2)) == 2
    assert runner.task_s is not None and runner.depth() == 8  # no-op tasks: the batch's share

    waiting = tasks([sleep_for(0)] * 16, start=10)
    runner.dispatch(waiting)
    assert not waiting and sorted(len(s.tasks) for s in runner.slots) == [8, 8]
    outcomes = collect_all(runner, 16)
    assert sorted(t.task_id for t, ok, _ in outcomes if ok) == list(range(10, 26))
    per_worker = [[t.task_id for t, _, _ in outcomes if t.task_id in ids]
                  for ids in ({10, 12, 14, 16, 18, 20, 22, 24}, {11, 13, 15, 17, 19, 21, 23, 25})]
    assert all(ids == sorted(ids) for ids in per_worker)  # a worker runs its tasks in order
    assert runner.running == 0


def test_long_tasks_never_wait_behind_another(runner):
    runner.task_s = 0.2  # tasks of 200 ms
    assert runner.depth() == 1
    waiting = tasks([sleep_for(0.2)] * 5)
    runner.dispatch(waiting)
    assert [len(s.tasks) for s in runner.slots] == [1, 1] and len(waiting) == 3


def test_prefetch_off_keeps_one_per_worker():
    cfg = PoolConfig([1], TaskSpec(fn="eqflow.workers.tasks:noop"), n_workers=1, batch_size=8, prefetch=False)
    runner = _ProcessRunner(cfg)
    try:
        runner.task_s = 0.0001
        assert runner.depth() == 1
    finally:
        runner.close()


def test_a_busy_worker_gets_no_payload_too_big_for_its_pipe(runner):
    runner.task_s = 0.001
    big = json.dumps({"seconds": 0.5, "pad": "x" * 40_000})
    runner.dispatch(tasks([sleep_for(0.5)] * 2))
    waiting = tasks([big, big], start=10)
    runner.dispatch(waiting)  # both workers run a task: 40 kB would block the pool's send
    assert [len(s.tasks) for s in runner.slots] == [1, 1] and len(waiting) == 2
    waiting.extend(tasks([sleep_for(0)] * 2, start=20))
    waiting.rotate(-2)  # small ones first: they fit
    runner.dispatch(waiting)
    assert [len(s.tasks) for s in runner.slots] == [2, 2] and [t.task_id for t in waiting] == [10, 11]
    assert len(collect_all(runner, 4)) == 4
    runner.dispatch(waiting)  # idle again: a worker reading its pipe takes any size
    assert not waiting
    assert len(collect_all(runner, 2)) == 2


def test_a_killed_worker_fails_its_running_task_and_hands_back_the_rest(runner):
    runner.task_s = 0.001
    waiting = tasks([sleep_for(30), sleep_for(0), sleep_for(0)])
    runner.slots[1].close()  # one worker only, so all three go to the same one
    runner.slots = runner.slots[:1]
    runner.dispatch(waiting)
    slot = runner.slots[0]
    assert len(slot.tasks) == 3
    time.sleep(0.5)
    os.kill(slot.proc.pid, signal.SIGKILL)
    outcomes = collect_all(runner, 1)
    assert [(t.task_id, ok) for t, ok, _ in outcomes] == [(1, False)]
    assert "SIGKILL" in outcomes[0][2]
    assert [t.task_id for t in runner.take_unstarted()] == [2, 3]
    assert runner.running == 0 and slot.proc.is_alive()  # replaced by a live worker


def test_a_timed_out_task_fails_alone_and_those_behind_it_go_back(runner):
    runner.task_s = 0.001
    runner.slots[1].close()
    runner.slots = runner.slots[:1]
    waiting = tasks([sleep_for(0), sleep_for(60), sleep_for(0)])
    runner.dispatch(waiting)
    started = time.monotonic()
    outcomes = collect_all(runner, 2, timeout=15)
    assert [(t.task_id, ok) for t, ok, _ in outcomes] == [(1, True), (2, False)]
    assert "timed out after 3s" in outcomes[1][2]
    assert time.monotonic() - started < 3 + 2  # timed from when task 2 started, not from the hand-over
    assert [t.task_id for t in runner.take_unstarted()] == [3]


def test_stopping_reports_what_finished_and_knows_what_never_started(runner):
    """A pool that stops kills its busy workers: an outcome still in the pipe is kept (reported,
    never rerun), the task being run counts as started, the one behind it as never started."""
    runner.task_s = 0.001
    runner.slots[1].close()
    runner.slots = runner.slots[:1]
    runner.dispatch(tasks([sleep_for(0), sleep_for(30), sleep_for(0)]))
    time.sleep(1.0)  # task 1 is done, its outcome unread; task 2 is running
    finished = runner.stop()
    assert [(t.task_id, ok) for t, ok, _ in finished] == [(1, True)]
    assert [t.task_id for t in runner.started()] == [2]
    assert [t.task_id for t in runner.queued()] == [3]


def test_results_larger_than_one_read_of_the_pipe_come_back_whole_and_in_order():
    """Outcomes travel as length-prefixed frames read 64 KiB at a time: a result of several
    reads, and many small ones read together, each come back whole, to their own task."""
    cfg = PoolConfig([1], TaskSpec(fn="eqflow.workers.tasks:noop"), n_workers=1, batch_size=40)
    runner = _ProcessRunner(cfg)
    try:
        runner.task_s = 0.0  # known to be short: all 40 go to the one worker in one message
        payloads = ["é" * 300_000 if i % 10 == 3 else f"small-{i}" for i in range(40)]
        waiting = tasks(payloads)
        runner.dispatch(waiting)
        assert not waiting
        outcomes = collect_all(runner, 40)
        assert [t.task_id for t, _, _ in outcomes] == list(range(1, 41))
        assert [value for _, ok, value in outcomes if ok] == payloads
    finally:
        runner.close()
