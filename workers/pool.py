"""The pool runtime: claims tasks of its types and runs them on N concurrent workers.

It keeps at most ``batch_size`` tasks in hand and asks for more once ``threshold`` slots are
free (EQ-SQL's CFG_BATCH_SIZE / CFG_BATCH_THRESHOLD), heartbeats its leases, reports results
in batches, obeys stop requests (drain or now) and, on SIGTERM/SIGINT, returns unfinished
tasks to the queue before it exits. Tasks run in worker processes (see slots.py) or, for
I/O-bound work, in threads.

    python -m eqflow.workers.pool --types 1 --fn eqflow.workers.tasks:ackley --workers 4
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from eqflow.compat.eqsql import EQ_STOP
from eqflow.errors import DatabaseUnavailable, InvalidInput
from eqflow.logs import setup_logging
from eqflow.metrics import PoolMetrics
from eqflow.models import ClaimedTask, StopMode
from eqflow.notify import Inbox
from eqflow.queue import LocalTaskQueue
from eqflow.workers.gpu import detect_gpus, slot_devices
from eqflow.workers.slots import Slot, TaskSpec, load_function, ready_fds, run_task

log = logging.getLogger("eqflow.pool")

_Outcome = tuple[ClaimedTask, bool, str]  # a task, whether it succeeded, its result or error


@dataclass
class PoolConfig:
    task_types: list[int]
    spec: TaskSpec
    name: str = "pool"
    n_workers: int = 1
    batch_size: int = 0  # 0: same as n_workers
    threshold: int = 1
    threads: bool = False
    task_timeout_s: float | None = None
    mem_limit_mb: int | None = None
    gpus: list[str] = field(default_factory=list)  # CUDA_VISIBLE_DEVICES per worker ("" = none)
    heartbeat_s: float = 5.0
    idle_exit_s: float | None = None  # exit after this long with nothing to do
    launcher: str = "local"
    job_id: str | None = None
    prefetch: bool = True  # short tasks: hand a worker several at once (see _ProcessRunner)

    def __post_init__(self) -> None:
        if self.n_workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.n_workers}")
        self.batch_size = self.batch_size or self.n_workers
        if self.batch_size < self.n_workers:
            raise ValueError(f"batch_size ({self.batch_size}) must be >= workers ({self.n_workers})")
        if not 1 <= self.threshold <= self.batch_size:
            raise ValueError(f"threshold must be in 1..batch_size ({self.batch_size}), got {self.threshold}")
        if self.threads and self.mem_limit_mb is not None:
            raise ValueError("a memory limit needs worker processes, not threads")


class Pool:
    """Runs until told to stop (or idle for idle_exit_s); see the module docstring."""

    def __init__(self, queue: LocalTaskQueue, cfg: PoolConfig) -> None:
        self.queue = queue
        self.cfg = cfg
        self.waiting: deque[ClaimedTask] = deque()  # claimed, not yet started
        self.parked_stops: list[ClaimedTask] = []  # EQ-SQL stop messages for other pools
        self.completed = 0
        self.failed = 0
        self._stop_mode: StopMode | None = None
        self.pool_id = 0
        self.pool_name = cfg.name
        self._db_gone = False  # gave up on an unreachable database: exit without talking to it
        self.metrics: PoolMetrics | None = None  # --metrics-port: the pool's own figures
        self._idle_since = 0.0
        self._starved_since: float | None = None  # the last claim came back short: wait for news
        self._unreported: list[tuple[ClaimedTask, bool, str]] = []  # finished, not yet reported
        self._reporter = cf.ThreadPoolExecutor(1, thread_name_prefix="eqflow-report")  # see _send
        self._inflight: cf.Future[list[ClaimedTask]] | None = None
        self._inflight_want = 0
        self._inflight_tasks: list[ClaimedTask] = []
        # A claim on a connection of its own while a report is in flight (see _claim_ahead).
        self._claimer = cf.ThreadPoolExecutor(1, thread_name_prefix="eqflow-claim")
        self._ahead: cf.Future[list[ClaimedTask]] | None = None
        self._ahead_want = 0
        self._wake_r, self._wake_w = os.pipe()  # a report or claim coming back wakes the loop's wait
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def request_stop(self, mode: StopMode) -> None:
        if self._stop_mode is not StopMode.NOW:
            self._stop_mode = StopMode(mode)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.cfg
        self.pool_id = self.queue.register_pool(
            cfg.name, cfg.task_types, n_workers=cfg.n_workers, launcher=cfg.launcher, job_id=cfg.job_id,
            info={"fn": cfg.spec.fn, "cmd": cfg.spec.cmd, "batch_size": cfg.batch_size,
                  "threshold": cfg.threshold, "threads": cfg.threads, "gpus": cfg.gpus})
        self.pool_name = f"{cfg.name}-{self.pool_id}"
        if self.metrics is not None:
            self.metrics.registered(self.pool_name, self.pool_id)
        log.info("pool started", extra={
            "pool": self.pool_name, "types": cfg.task_types, "workers": cfg.n_workers,
            "mode": "threads" if cfg.threads else "processes", "batch_size": cfg.batch_size,
            "task": cfg.spec.fn or cfg.spec.cmd, "db": _where(self.queue.url), "pid": os.getpid(),
            "stop": f"eqflow pool stop --type {cfg.task_types[0]} (or Ctrl-C)"})
        stop_inbox = self.queue.pool_inbox(self.pool_id)
        runner: _Runner = _ThreadRunner(cfg) if cfg.threads else _ProcessRunner(cfg)
        work_inbox = self.queue.work_inbox(cfg.task_types)
        last_beat = 0.0
        self._idle_since = time.monotonic()
        self._starved_since = None
        try:
            while True:
                if time.monotonic() - last_beat >= cfg.heartbeat_s or stop_inbox.wait(0)[2]:
                    self._heartbeat(runner)
                    last_beat = time.monotonic()
                if self._stop_mode is StopMode.NOW:
                    break
                self._reap(runner)
                news = self._top_up(runner, work_inbox)
                self._dispatch(runner)
                if not self.waiting and not runner.running and self._inflight is None and self._ahead is None \
                        and not self._unreported:
                    if self._stop_mode is StopMode.DRAIN and self._starved_since is not None:
                        break
                    if cfg.idle_exit_s is not None and time.monotonic() - self._idle_since > cfg.idle_exit_s:
                        break
                    self._rest(work_inbox, news)
                    continue
                waiting_on_db = self._inflight is not None or self._ahead is not None
                self._unreported.extend(runner.collect(0.05, self._wake_r if waiting_on_db else None))
                self.waiting.extendleft(reversed(runner.take_unstarted()))
                self._dispatch(runner)  # keep workers busy while the results are reported
                self._reap(runner)
                if self._unreported and self._inflight is None:
                    self._send(runner)
        except DatabaseUnavailable as exc:
            # With a give-up (--db-timeout), or told to stop by a signal during an outage: by
            # default every call waits the outage out.
            self._db_gone = True
            if self._stop_mode is StopMode.NOW:
                log.warning("stopping during a database outage", extra={"pool": self.pool_name})
            else:
                log.error("database unreachable for too long; the pool exits", extra={
                    "pool": self.pool_name, "db_timeout_s": self.queue.db.reconnect_timeout, "error": str(exc)})
            raise
        finally:
            self._shutdown(runner)
            stop_inbox.close()
        return self.completed

    def _top_up(self, runner: _Runner, work_inbox: Inbox) -> bool:
        """Claim when there is room for at least ``threshold`` tasks; returns whether there may be
        work (no short claim since the last news of new tasks)."""
        cfg = self.cfg
        in_hand = len(self.waiting) + runner.running
        want = cfg.batch_size - in_hand - self._coming()
        starved = self._starved_since
        news = starved is None or work_inbox.wait(0)[2] or time.monotonic() - starved > cfg.heartbeat_s
        if want >= cfg.threshold and news and self._ahead is None:
            if self._inflight is None:  # (a report in flight claims for the slots it frees: see _send)
                wait_s = 0.0 if in_hand else min(cfg.heartbeat_s, 1.0)
                self._took(self._claim(want, wait_s), want)
            elif runner.idle and not self.waiting and cfg.batch_size >= 2 * cfg.n_workers:
                # Only with room for short tasks: a pool that holds one task per worker holds no
                # more than its workers run (and its tasks' times in the database stay theirs).
                # Finished tasks wait for the report in flight or the next: with those, the pool
                # holds at most twice its batch.
                owned = in_hand + len(self._unreported) + len(self._inflight_tasks) + self._coming()
                want = min(want, 2 * cfg.batch_size - owned)
                if want >= cfg.threshold:
                    self._claim_ahead(want)
        return bool(news)

    def _send(self, runner: _Runner) -> None:
        """Hand the finished tasks' outcomes to the reporting thread: one statement reports them
        and, with room in hand, claims the next tasks (one commit per batch at steady state
        instead of two). The loop keeps dispatching and collecting meanwhile; what finishes
        before the report is back goes in the next one, so reports grow with the database's
        latency instead of stalling the workers."""
        due, self._unreported = self._unreported, []
        want = self.cfg.batch_size - len(self.waiting) - runner.running - self._coming()
        self._inflight_want = want if want >= self.cfg.threshold and any(ok for _, ok, _ in due) else 0
        self._inflight_tasks = [task for task, _, _ in due]
        self._inflight = self._reporter.submit(self._report, due, self._inflight_want)
        self._inflight.add_done_callback(self._wake)

    def _claim_ahead(self, want: int) -> None:
        """Workers idle while a report (and the claim that comes with it) is in flight: claim
        more now, on another connection, instead of waiting for it. With short tasks a report of
        a few hundred takes longer than the workers need for what they hold; the two statements
        run side by side in the database. Pools whose batch is at least twice their workers."""
        self._ahead_want = want
        self._ahead = self._claimer.submit(self._claim, want, 0.0)
        self._ahead.add_done_callback(self._wake)

    def _wake(self, _: object) -> None:
        os.write(self._wake_w, b".")

    def _coming(self) -> int:
        """Tasks asked for by the statements in flight (they count against the batch)."""
        return (self._inflight_want if self._inflight is not None else 0) + \
            (self._ahead_want if self._ahead is not None else 0)

    def _reap(self, runner: _Runner) -> None:
        """A report or claim that is back: the tasks it claimed join the waiting line."""
        report = self._inflight if self._inflight is not None and self._inflight.done() else None
        ahead = self._ahead if self._ahead is not None and self._ahead.done() else None
        if report is None and ahead is None:
            return
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        if report is not None:
            self._inflight, self._inflight_tasks = None, []
            claimed = report.result()  # its DatabaseUnavailable, if any, is the loop's
            if self._inflight_want:
                self._took(claimed, self._inflight_want)
        if ahead is not None:
            self._ahead = None
            self._took(ahead.result(), self._ahead_want)
        self._dispatch(runner)

    def _took(self, claimed: list[ClaimedTask], want: int) -> None:
        """Tasks just claimed (asked for ``want``): into the waiting line; a short claim means
        the queue is empty for now (the loop then waits for news before asking again)."""
        self.waiting.extend(self._take_stop_messages(claimed))
        self._starved_since = time.monotonic() if len(claimed) < want else None
        if claimed:
            self._idle_since = time.monotonic()

    def _rest(self, work_inbox: Inbox, news: bool) -> None:
        """Nothing in hand and no news since the last short claim: sleep until new work is
        announced (or the next look), instead of spinning through the loop at 100 % CPU."""
        if self._starved_since is not None and self._stop_mode is None and not news and \
                work_inbox.wait(min(self.cfg.heartbeat_s, 1.0))[2]:
            self._starved_since = None

    def _take_stop_messages(self, claimed: list[ClaimedTask]) -> list[ClaimedTask]:
        """The claimed tasks that are work. EQ-SQL's stop_worker_pool queues an EQ_STOP task
        of the type for one pool to read: this pool consumes the first it claims and drains.
        Others (for other pools, or read while already stopping) are held until this pool
        stops, then go back to the queue (released now, they would be claimed again at once)."""
        stops = [t for t in claimed if t.payload == EQ_STOP]
        if not stops:
            return claimed
        if self._stop_mode is None:
            self.queue.report([(stops[0], EQ_STOP)])
            self.request_stop(StopMode.DRAIN)
            log.info("EQ-SQL stop message read: draining", extra={"pool": self.pool_name,
                                                                   "task_id": stops[0].task_id})
            stops = stops[1:]
        self.parked_stops.extend(stops)
        return [t for t in claimed if t.payload != EQ_STOP]

    def _claim(self, n: int, wait_s: float) -> list[ClaimedTask]:
        asked = time.perf_counter()
        claimed = self.queue.claim(self.cfg.task_types, n=n, pool=self.pool_name, timeout=wait_s)
        if claimed and self.metrics is not None:
            self.metrics.claim_seconds.observe(time.perf_counter() - asked)
        return claimed

    def _dispatch(self, runner: _Runner) -> None:
        if self.waiting:
            runner.dispatch(self.waiting)
        if self.metrics is not None:
            self.metrics.running.set(runner.running)

    def _heartbeat(self, runner: _Runner) -> None:
        mode = self.queue.pool_heartbeat(self.pool_id)
        if self.metrics is not None:
            self.metrics.heartbeat()
        if mode is not None:
            self.request_stop(mode)
        held = list(self.waiting) + runner.held() + self.parked_stops + self._inflight_tasks + \
            [t for t, _, _ in self._unreported]
        if held:
            still = self.queue.extend_leases(held)
            # After a database outage longer than the lease, tasks waiting here may have been
            # rescued and handed to another pool: not ours to start any more.
            lost = [t for t in self.waiting if t.task_id not in still]
            if lost:
                self.waiting = deque(t for t in self.waiting if t.task_id in still)
                log.warning("leases lost; tasks left to their new holders",
                            extra={"pool": self.pool_name, "task_ids": [t.task_id for t in lost][:20]})

    def _report(self, outcomes: list[_Outcome], claim: int = 0) -> list[ClaimedTask]:
        """Report outcomes; with claim > 0, claim up to that many tasks in the same statement."""
        results = [(task, value) for task, ok, value in outcomes if ok]
        failures = [(task, value) for task, ok, value in outcomes if not ok]
        claimed: list[ClaimedTask] = []
        if results:
            if claim:
                asked = time.perf_counter()
                ids, claimed = self.queue.report_and_claim(results, self.cfg.task_types, n=claim,
                                                           pool=self.pool_name)
                accepted = len(ids)
                if claimed and self.metrics is not None:
                    self.metrics.claim_seconds.observe(time.perf_counter() - asked)
            else:
                accepted = len(self.queue.report(results))
            self.completed += accepted
            if self.metrics is not None:
                self.metrics.completed.inc(accepted)
        if failures:
            self.failed += len(failures)
            self.queue.report_failure(failures)
            if self.metrics is not None:
                self.metrics.failed.inc(len(failures))
        return claimed

    def _shutdown(self, runner: _Runner) -> None:
        if self._inflight is not None:  # the report in flight: its claims are returned below
            try:
                claimed = self._inflight.result()
                self.waiting.extend(self._take_stop_messages(claimed) if self._inflight_want else [])
            except Exception as exc:  # its tasks' leases run out and they are rescued
                log.warning("last report failed", extra={"pool": self.pool_name, "error": str(exc)})
            self._inflight = None
        if self._ahead is not None:  # a claim in flight: its tasks are returned below
            with contextlib.suppress(Exception):  # (failed: their leases run out)
                self.waiting.extend(self._take_stop_messages(self._ahead.result()))
            self._ahead = None
        self._reporter.shutdown(wait=True)
        self._claimer.shutdown(wait=True)
        os.close(self._wake_r)
        os.close(self._wake_w)
        # Busy workers are killed here; what they finished before is reported, not rerun, and
        # a task waiting behind a running one is known not to have started.
        self._unreported.extend(runner.stop())
        if self._unreported and not self._db_gone:  # finished here: report, never rerun
            due, self._unreported = self._unreported, []
            with contextlib.suppress(DatabaseUnavailable):
                self._report(due)
        unstarted = list(self.waiting) + self.parked_stops + runner.take_unstarted() + runner.queued()
        started = runner.started()
        self.waiting.clear()
        self.parked_stops.clear()
        runner.close()
        if self._db_gone:  # their leases expire and they are rescued
            log.warning("pool stopped without returning its tasks", extra={
                "pool": self.pool_name, "held": len(unstarted) + len(started)})
            return
        if unstarted or started:  # a started run counts in attempts, an unstarted one does not
            returned = self.queue.release(started) | self.queue.release(unstarted, unstarted=True)
            log.info("returned unfinished tasks", extra={"count": len(returned)})
        self.queue.pool_stopped(self.pool_id)
        log.info("pool stopped", extra={"pool": self.pool_name, "completed": self.completed,
                                        "failed": self.failed})


class _Runner(Protocol):
    @property
    def running(self) -> int: ...  # tasks handed to workers (running or queued in one)
    @property
    def idle(self) -> int: ...  # workers with nothing to do
    def dispatch(self, waiting: deque[ClaimedTask]) -> None: ...  # takes what it has room for
    def collect(self, timeout: float, wake: int | None = None) -> list[_Outcome]: ...
    def stop(self) -> list[_Outcome]: ...  # kill busy workers: what they finished
    def take_unstarted(self) -> list[ClaimedTask]: ...  # handed back by a worker that died
    def held(self) -> list[ClaimedTask]: ...  # every task handed to workers
    def started(self) -> list[ClaimedTask]: ...  # the ones running
    def queued(self) -> list[ClaimedTask]: ...  # the ones waiting in a worker behind another
    def close(self) -> None: ...


class _ProcessRunner:
    """Tasks in worker processes: per-task timeouts kill the worker; dead workers are replaced.

    Short tasks are handed over a few at a time: once the mean task time is known and below
    PREFETCH_BELOW_S, a worker gets up to PREFETCH_WINDOW_S of work in one message (at most its
    share of the batch), so it starts the next task without a round trip through the pool, and
    the pool sends one message per several tasks. Longer tasks go one per worker: nothing ever
    waits in a worker behind a long task while another worker is free. A busy worker is given
    more only while their payloads fit comfortably in its pipe, so a send never blocks the pool."""

    PREFETCH_BELOW_S = 0.05
    PREFETCH_WINDOW_S = 0.02
    PIPE_ROOM = 32 * 1024  # payload bytes that may wait in a busy worker's pipe

    def __init__(self, cfg: PoolConfig) -> None:
        self.cfg = cfg
        devices = cfg.gpus or [""] * cfg.n_workers
        self.slots = [Slot(i, {"CUDA_VISIBLE_DEVICES": dev} if dev else {}, cfg.mem_limit_mb)
                      for i, dev in enumerate(devices)]
        self.share = -(-cfg.batch_size // cfg.n_workers)  # the most tasks one worker holds
        self.task_s: float | None = None  # moving mean of the run time of a task, seconds
        self._unstarted: list[ClaimedTask] = []

    @property
    def running(self) -> int:
        return sum(len(s.tasks) for s in self.slots)

    @property
    def idle(self) -> int:
        return sum(not s.busy for s in self.slots)

    def depth(self) -> int:
        """How many tasks a worker may hold (1: the running one only)."""
        if not self.cfg.prefetch or self.task_s is None or self.task_s >= self.PREFETCH_BELOW_S:
            return 1
        return max(2, min(self.share, math.ceil(self.PREFETCH_WINDOW_S / max(self.task_s, 1e-6))))

    def dispatch(self, waiting: deque[ClaimedTask]) -> None:
        depth = self.depth()
        given: dict[int, list[ClaimedTask]] = {}
        room = {s.index: self.PIPE_ROOM - s.queued_bytes for s in self.slots}
        while waiting:
            slot = min(self.slots, key=lambda s: len(s.tasks) + len(given.get(s.index, [])))
            load = len(slot.tasks) + len(given.get(slot.index, []))
            if load >= depth:
                break
            task = waiting[0]
            if load and slot.busy:  # it will wait in the pipe of a running worker
                if len(task.payload) > room[slot.index]:
                    break
                room[slot.index] -= len(task.payload)
            given.setdefault(slot.index, []).append(waiting.popleft())
        for index, tasks in given.items():
            self.slots[index].submit(self.cfg.spec, tasks)

    def collect(self, timeout: float, wake: int | None = None) -> list[_Outcome]:
        """Outcomes of finished tasks, waiting up to timeout for one (or for ``wake``, a file
        descriptor that becomes readable when the pool has news of its own)."""
        busy = [s for s in self.slots if s.busy]
        outcomes = []
        ready = ready_fds([s.conn.fileno() for s in busy] + ([wake] if wake is not None else []), timeout)
        for slot in busy:
            if slot.conn.fileno() in ready:
                try:
                    results = slot.take_results()
                except (EOFError, OSError):
                    slot.proc.join(timeout=1)  # reaped, its exit status tells why
                    outcomes += self._lost(slot, slot.died() or "worker process lost")
                    continue
                outcomes += self._finished(results)
            elif (limit := self.cfg.task_timeout_s) is not None and time.monotonic() - slot.started_at > limit:
                slot.kill()
                outcomes += self._lost(slot, f"task timed out after {limit:g}s; worker killed")
            elif (why := slot.died()) is not None:
                outcomes += self._lost(slot, why)
        for slot in self.slots:
            slot.replace_if_dead()
        return outcomes

    def _lost(self, slot: Slot, why: str) -> list[_Outcome]:
        """A dead (or just killed) worker: what it finished before, then its running task as
        failed; it is restarted and the tasks behind that one wait to be handed out again."""
        outcomes = self._finished(slot.drain())  # the first task left is the one it was running
        if slot.busy:
            outcomes.append((slot.task, False, why))
        self._unstarted += slot.restart()
        return outcomes

    def _finished(self, results: list[tuple[ClaimedTask, tuple[bool, str, float]]]) -> list[_Outcome]:
        for _, (_, _, seconds) in results:
            self.task_s = seconds if self.task_s is None else 0.8 * self.task_s + 0.2 * seconds
        return [(task, ok, value) for task, (ok, value, _) in results]

    def stop(self) -> list[_Outcome]:
        """Kill the busy workers; the outcomes they sent before that. Afterwards each slot's
        first task is the one its worker was running, and those behind it never started."""
        outcomes = []
        for slot in self.slots:
            if slot.busy:
                slot.kill()
                outcomes += self._finished(slot.drain())
        return outcomes

    def take_unstarted(self) -> list[ClaimedTask]:
        out, self._unstarted = self._unstarted, []
        return out

    def held(self) -> list[ClaimedTask]:
        return [t for s in self.slots for t in s.tasks]

    def started(self) -> list[ClaimedTask]:
        return [s.task for s in self.slots if s.busy]

    def queued(self) -> list[ClaimedTask]:
        return [t for s in self.slots for t in list(s.tasks)[1:]]

    def close(self) -> None:
        for slot in self.slots:
            slot.close()


class _ThreadRunner:
    """Tasks in threads (I/O-bound work). A timed-out task is reported failed; its thread
    cannot be killed and runs on, its result ignored."""

    def __init__(self, cfg: PoolConfig) -> None:
        self.cfg = cfg
        self.executor = cf.ThreadPoolExecutor(cfg.n_workers, thread_name_prefix="eqflow-task")
        self.futures: dict[cf.Future[tuple[bool, str]], tuple[ClaimedTask, float]] = {}

    @property
    def running(self) -> int:
        return len(self.futures)

    @property
    def idle(self) -> int:
        return self.cfg.n_workers - len(self.futures)

    def dispatch(self, waiting: deque[ClaimedTask]) -> None:
        while waiting and len(self.futures) < self.cfg.n_workers:
            task = waiting.popleft()
            fut = self.executor.submit(run_task, self.cfg.spec, task.task_id, task.payload)
            self.futures[fut] = (task, time.monotonic())

    def collect(self, timeout: float, wake: int | None = None) -> list[_Outcome]:
        if wake is not None:  # a report in flight: look again soon
            timeout = min(timeout, 0.005)
        if not self.futures:
            time.sleep(timeout)
            return []
        done, _ = cf.wait(list(self.futures), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        outcomes = []
        for fut in done:
            task, _ = self.futures.pop(fut)
            ok, value = fut.result()
            outcomes.append((task, ok, value))
        limit = self.cfg.task_timeout_s
        if limit is not None:
            for fut, (task, started) in list(self.futures.items()):
                if time.monotonic() - started > limit:
                    del self.futures[fut]
                    outcomes.append((task, False, f"task timed out after {limit:g}s (thread left running)"))
        return outcomes

    def stop(self) -> list[_Outcome]:
        return []

    def take_unstarted(self) -> list[ClaimedTask]:
        return []

    def held(self) -> list[ClaimedTask]:
        return [task for task, _ in self.futures.values()]

    def started(self) -> list[ClaimedTask]:
        return self.held()

    def queued(self) -> list[ClaimedTask]:
        return []

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eqflow pool run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", type=int, nargs="+", required=True, help="task types to claim")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--fn", help="task function, module:function (payload str in, result str out)")
    what.add_argument("--cmd", help="shell command template with {payload}, {payload_file}, {task_id}; "
                                    "its stdout is the result")
    parser.add_argument("--name", default="pool", help="pool name (the pool id is appended)")
    parser.add_argument("--workers", type=int, default=None, help="concurrent workers (default 1, or the GPU slots)")
    parser.add_argument("--batch-size", type=int, default=0, help="most tasks in hand (default: workers)")
    parser.add_argument("--threshold", type=int, default=1, help="free slots before asking for more")
    parser.add_argument("--threads", action="store_true", help="run tasks in threads (I/O-bound work)")
    parser.add_argument("--no-prefetch", dest="prefetch", action="store_false",
                        help="never hand a worker a task before its last one is done (by default "
                             "tasks under 50 ms go a few at a time, up to the batch's share)")
    parser.add_argument("--timeout", type=float, default=None, help="per-task timeout, seconds")
    parser.add_argument("--mem-limit-mb", type=int, default=None, help="per-worker memory limit, MiB")
    parser.add_argument("--gpu", action="store_true", help="give each worker its own GPU slot")
    parser.add_argument("--workers-per-gpu", type=int, default=1, help="workers sharing one GPU")
    parser.add_argument("--db", default=None, help="database URL (default: $EQFLOW_DB_URL or embedded)")
    parser.add_argument("--lease", type=float, default=60.0, help="lease seconds (heartbeat every lease/4)")
    parser.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    parser.add_argument("--db-timeout", type=float, default=None, metavar="SECONDS",
                        help="exit (status 1) when the database stays unreachable this long "
                             "(default: wait out an outage of any length)")
    parser.add_argument("--launcher", default=os.environ.get("EQFLOW_LAUNCHER", "local"), help=argparse.SUPPRESS)
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only (default: start, stop, ...)")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve this pool's Prometheus metrics on this port (eqflow_pool_*)")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    return parser


def config_from_args(args: argparse.Namespace) -> PoolConfig:
    spec = TaskSpec(fn=args.fn, cmd=args.cmd)
    if spec.fn:
        load_function(spec.fn)  # fail fast on a bad name
    gpus: list[str] = []
    if args.gpu:
        gpus = slot_devices(detect_gpus(), args.workers_per_gpu, args.workers)
    workers = args.workers or (len(gpus) if gpus else 1)
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID")
    return PoolConfig(args.types, spec, args.name, workers, args.batch_size, args.threshold, args.threads,
                      args.timeout, args.mem_limit_mb, gpus, heartbeat_s=max(0.2, args.lease / 4),
                      idle_exit_s=args.idle_exit, launcher=args.launcher, job_id=job_id, prefetch=args.prefetch)


def _where(url: str) -> str:
    """host:port/dbname of a database URL, never its password."""
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(0 if args.quiet else 1, args.log_json)
    try:
        cfg = config_from_args(args)
    except (ValueError, ImportError, AttributeError) as exc:
        print(f"eqflow pool run: {exc}", file=sys.stderr)
        return 2
    if args.db_timeout is not None and not args.db_timeout > 0:
        print(f"eqflow pool run: --db-timeout must be > 0 seconds, got {args.db_timeout}", file=sys.stderr)
        return 2
    try:
        queue = LocalTaskQueue(args.db, lease_s=args.lease, reconnect_timeout=args.db_timeout)
    except InvalidInput as exc:  # a bad --lease, say: a usage error, not a traceback
        print(f"eqflow pool run: {exc}", file=sys.stderr)
        return 2
    pool = Pool(queue, cfg)
    if args.metrics_port is not None:
        try:
            pool.metrics = PoolMetrics(args.metrics_port, args.metrics_host)
        except OSError as exc:  # the port is taken, say
            queue.close()
            print(f"eqflow pool run: --metrics-port {args.metrics_port}: {exc}", file=sys.stderr)
            return 2

    def on_signal(*_: object) -> None:
        pool.request_stop(StopMode.NOW)
        queue.db.stop_waiting()  # in an outage: exit now, held tasks return as their leases expire

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        pool.run()
    except DatabaseUnavailable as exc:
        if not pool._db_gone:  # before the loop (registering the pool)
            log.error("database unreachable; the pool exits", extra={"error": str(exc)})
        return 1
    finally:
        queue.close()
        if pool.metrics is not None:
            pool.metrics.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


