"""EMEWS EQ-SQL's public task-queue API on top of eqflow.

Existing EQ-SQL ME scripts, Python worker pools and the Swift/T glue port by changing one
import::

    from eqflow.compat import eqsql as local_queue   # was: from eqsql.task_queues import local_queue
    from eqflow.compat.eqsql import init_task_queue, ResultStatus, EQ_STOP, ABORT_MSG, ...

Same names (``LocalTaskQueue``/``EQSQL``/``TaskQueue``, ``Future``/``LocalFuture``, ``logger``),
arguments, ``(ResultStatus, value)`` returns, message dicts and EQ_STOP/EQ_TIMEOUT/EQ_ABORT.
Underneath is eqflow's queue: waits are woken by notifications (``delay`` and ``sleep`` are
accepted and ignored) and bulk calls are one statement.

How EQ-SQL's behaviour is kept:

* Claims are leases (``lease_s``, default 60 s, or ``$EQFLOW_COMPAT_LEASE_S`` for scripts that
  cannot pass it). EQ-SQL pools do not heartbeat, so a thread per process and database extends
  the leases of tasks claimed through this module until they are reported. It is per process,
  not per queue object, because EQ-SQL's Swift/T glue opens and closes a queue for every call:
  a task stays leased while the process that claimed it lives, and comes back to the queue one
  lease after that process dies. The thread ends when it holds nothing.
* ``stop_worker_pool`` queues one EQ_STOP message of the type at priority -1. An EQ-SQL-style
  pool reads it from ``query_task``; an eqflow pool (``eqflow pool run``) that claims it
  consumes it and drains. One message stops one pool.
* ``are_queues_empty`` answers from EQ-SQL's two queues: no task queued (its output queue), and
  no result of a task submitted here that was reported but not read yet (its input queue). A
  result counts as read once ``result()``/``query_result``/``as_completed`` returned it; that
  is recorded in the database (table ``compat_unread_results``), so it holds across processes.
* A Future keeps the result it has read; ``result(timeout=0)`` looks once.
* A failed query or a closed queue gives ``(FAILURE, EQ_ABORT)``; ``as_completed`` then yields
  every remaining future (their ``result()`` is EQ_ABORT, ``status`` None), as EQ-SQL does.

Remaining differences from EQ-SQL:

* A task that failed for good (an eqflow pool's max_attempts spent) has ``TaskStatus.FAILED``;
  it and a canceled task are "done": ``as_completed`` yields them and ``result()`` is
  ``(FAILURE, EQ_ABORT)`` (EQ-SQL never yields a canceled task; it would time out).
* Reading a result does not remove it: a second ``query_result`` of the same id returns it
  again (EQ-SQL's second pop times out).
* ``clear_queues`` cancels queued tasks and marks unread results read; it does not turn
  completed tasks into canceled ones.
* ``cancel_tasks`` returns the canceled ids (as EQ-SQL's newer modules; its older ``local``
  module returned a count).
* ``cancel_tasks``/``update_priorities`` are all or nothing: an unknown id changes nothing and
  gives FAILURE. ``submit_tasks`` is one statement: all submitted, or none.
* With n > 1, ``query_task`` returns tasks in priority order (EQ-SQL: task-id order).
* ``logger`` is one logger (``eqflow.compat.eqsql``) shared by the queues of a process;
  ``init_task_queue``'s log_level sets its level. It has no handler of its own.
* Raw SQL access (EQ-SQL's ``eq_sql.db.conn``), EQ-SQL's module-level functions of its older
  ``eq`` module (``eq.as_completed(...)`` etc.) and its pool launchers are not provided.
* In an embedded interpreter that never releases the GIL between calls (if Swift/T's is one),
  the lease thread only runs during calls: give such pools a lease longer than a task.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from enum import IntEnum
from typing import Any

import psycopg

from eqflow import errors, validate
from eqflow.db.connector import Connector
from eqflow.futures import Future as CoreFuture
from eqflow.futures import as_completed as core_as_completed
from eqflow.models import FINAL_STATES, ClaimedTask
from eqflow.models import TaskStatus as CoreStatus
from eqflow.queue import LocalTaskQueue as CoreQueue

log = logging.getLogger("eqflow.compat.eqsql")

EQ_ABORT = "EQ_ABORT"
EQ_TIMEOUT = "EQ_TIMEOUT"
EQ_STOP = "EQ_STOP"
ABORT_MSG = json.dumps({"type": "status", "payload": EQ_ABORT})
ABORT_JSON_MSG = ABORT_MSG  # the name in EQ-SQL's older modules

STOP_EXP_ID = "EQ_STOP"  # experiment that holds the stop messages
LEASE_ENV = "EQFLOW_COMPAT_LEASE_S"
DEFAULT_LEASE_S = 60.0

# What makes an EQ-SQL call answer FAILURE/EQ_ABORT instead of raising: the database failed or
# refused the statement. (EQ-SQL answers so for any exception.)
_FAILURES = (errors.EqflowError, psycopg.Error)


class ResultStatus(IntEnum):
    SUCCESS = 0
    FAILURE = 1


class TaskStatus(IntEnum):
    QUEUED = 0
    RUNNING = 1
    COMPLETE = 2
    CANCELED = 3
    REQUEUED = 4
    FAILED = 5  # eqflow: failed for good after max_attempts


_STATUS = {CoreStatus.QUEUED: TaskStatus.QUEUED, CoreStatus.RUNNING: TaskStatus.RUNNING,
           CoreStatus.COMPLETE: TaskStatus.COMPLETE, CoreStatus.CANCELED: TaskStatus.CANCELED,
           CoreStatus.FAILED: TaskStatus.FAILED}


class TimeoutError(Exception):  # noqa: A001 - EQ-SQL's name, kept for ported scripts
    def __init__(self, msg: str = "TimeoutError", *args: Any) -> None:
        super().__init__(msg, *args)


class StopConditionException(Exception):
    pass


class _Closed(Exception):
    """The queue was closed: EQ-SQL's calls then fail (EQ_ABORT)."""


class Future:
    """EQ-SQL's Future: ``eq_task_id``, ``tag``, ``result()``, ``status``, ``priority``..."""

    def __init__(self, eq_sql: LocalTaskQueue, core: CoreFuture) -> None:
        self.eq_sql = eq_sql
        self._core = core
        self.eq_task_id = core.task_id
        self.tag = core.tag
        self._result: tuple[ResultStatus, str] | None = None  # kept once the task is final
        self._pool: str | None = None

    def __repr__(self) -> str:
        return f"<eqsql.Future eq_task_id={self.eq_task_id}>"

    def result(self, delay: float = 0.5, timeout: float | None = 2.0) -> tuple[ResultStatus, str]:
        """The task's result, waiting up to timeout (0: look once, None: no limit)."""
        if self._result is not None:
            return self._result
        return self.eq_sql._read_result(self.eq_task_id, timeout, self)

    @property
    def status(self) -> TaskStatus | None:
        """The task's status, or None if the query fails."""
        if self._core._final:
            return _STATUS[self._core._status]
        found = self.eq_sql.get_status([self])
        return found[0][1] if found else None

    @property
    def worker_pool(self) -> str | None:
        if self._pool is None:
            found = self.eq_sql.get_worker_pools([self])
            self._pool = found[0][1] if found else None
        return self._pool

    def cancel(self) -> bool:
        if self.status == TaskStatus.CANCELED:
            return True
        status, ids = self.eq_sql.cancel_tasks([self])
        return status == ResultStatus.SUCCESS and self.eq_task_id in ids

    def done(self) -> bool:
        return self.status in (TaskStatus.COMPLETE, TaskStatus.CANCELED, TaskStatus.FAILED)

    @property
    def priority(self) -> int | None:
        found = self.eq_sql.get_priorities([self])
        return found[0][1] if isinstance(found, list) and found else None

    @priority.setter
    def priority(self, new_priority: int) -> None:
        self.eq_sql.update_priorities([self], new_priority)

    def _settle(self, row: tuple[Any, ...]) -> None:
        """Take a (task_id, exp_id, status, result, error, pool) row of a final task."""
        status = CoreStatus(row[2])
        self._core._settle(status, row[3], row[4], row[5])
        self._pool = row[5]
        self._result = (ResultStatus.SUCCESS, row[3] or "") if status is CoreStatus.COMPLETE \
            else (ResultStatus.FAILURE, EQ_ABORT)


LocalFuture = Future  # EQ-SQL's name in its task_queues.local module


class LocalTaskQueue:
    """EQ-SQL's LocalTaskQueue, backed by :class:`eqflow.LocalTaskQueue`."""

    def __init__(self, queue: CoreQueue, logger: logging.Logger | None = None) -> None:
        self.queue = queue
        self.logger = logger or log
        self._keeper = _keeper_for(queue.url, queue.lease_s)
        self._closed = False

    def close(self) -> None:
        """Close the connections. Tasks claimed and not reported stay leased (see module doc)."""
        if not self._closed:
            self._closed = True
            self.queue.close()

    def _check_open(self) -> None:
        if self._closed:
            raise _Closed("the task queue is closed")

    def _fail(self, what: str) -> None:
        self.logger.error(f"{what} failed", exc_info=True)

    # -- ME side ----------------------------------------------------------------------------
    def submit_task(self, exp_id: str, eq_type: int, payload: str, priority: int = 0,
                    tag: str | None = None) -> tuple[ResultStatus, Future | None]:
        status, futures = self.submit_tasks(exp_id, eq_type, [payload], priority, tag)
        return status, (futures[0] if futures else None)

    def submit_tasks(self, exp_id: str, eq_type: int, payload: list[str], priority: int = 0,
                     tag: str | None = None) -> tuple[ResultStatus, list[Future]]:
        """Submit in one statement, all or nothing; each task's result counts as unread."""
        try:
            self._check_open()
            exp_id = validate.exp_id(exp_id)
            task_type = validate.task_type(eq_type)
            payloads = [validate.text(p, "payload", self.queue.max_payload_bytes)
                        for p in validate.as_sequence(payload, "payload")]
            prio = validate.int32(priority, "priority")
            tag = validate.optional_text(tag, "tag", validate.MAX_TAG)
            if not payloads:
                return ResultStatus.SUCCESS, []
            self.queue._ensure_experiment(exp_id)
            rows = self.queue.db.fetch_all("compat_submit_tasks", {
                "exp_id": exp_id, "task_type": task_type, "payloads": payloads, "priority": prio,
                "tag": tag, "max_attempts": self.queue.max_attempts}, idempotent=False)
        except (*_FAILURES, _Closed):
            self._fail("submit_tasks (nothing was submitted)")
            return ResultStatus.FAILURE, []
        ids = sorted(r[0] for r in rows)
        return ResultStatus.SUCCESS, [Future(self, CoreFuture(self.queue, tid, exp_id, task_type, tag))
                                      for tid in ids]

    def query_result(self, eq_task_id: int, delay: float = 0.5, timeout: float | None = 2.0
                     ) -> tuple[ResultStatus, str]:
        return self._read_result(eq_task_id, timeout, None)

    def _read_rows(self, ids: list[int]) -> dict[int, tuple[Any, ...]]:
        """State of the tasks; the finished ones count as read from now on (one statement)."""
        rows = self.queue.db.fetch_all("compat_read_results", {"task_ids": ids})
        return {r[0]: r for r in rows}

    def _read_result(self, eq_task_id: int, timeout: float | None, fut: Future | None
                     ) -> tuple[ResultStatus, str]:
        timeout = validate.timeout(timeout)
        try:
            self._check_open()
            row = self._read_rows([eq_task_id]).get(eq_task_id)
            if row is None:
                self.logger.error("query_result: unknown task", extra={"eq_task_id": eq_task_id})
                return ResultStatus.FAILURE, EQ_ABORT
            while CoreStatus(row[2]) not in FINAL_STATES and timeout != 0:
                if not self.queue.wait_finished([eq_task_id], {row[1]}, timeout if timeout is not None else 60.0):
                    if timeout is not None:
                        break
                    continue
                row = self._read_rows([eq_task_id])[eq_task_id]
        except (*_FAILURES, _Closed):
            self._fail("query_result")
            return ResultStatus.FAILURE, EQ_ABORT
        if CoreStatus(row[2]) not in FINAL_STATES:
            return ResultStatus.FAILURE, EQ_TIMEOUT
        target = fut or Future(self, CoreFuture(self.queue, eq_task_id, row[1], 0))
        target._settle(row)
        assert target._result is not None
        return target._result

    def get_status(self, futures: Iterable[Future]) -> list[tuple[Future, TaskStatus]] | None:
        return self._per_future(futures, lambda r: _STATUS[CoreStatus(r[3])])

    def get_priorities(self, futures: Iterable[Future]) -> Any:
        result = self._per_future(futures, lambda r: r[4])
        return ResultStatus.FAILURE if result is None else result

    def get_worker_pools(self, futures: Iterable[Future]) -> list[tuple[Future, str | None]] | None:
        return self._per_future(futures, lambda r: r[5])

    def _per_future(self, futures: Iterable[Future], pick: Any) -> Any:
        """(future, pick(row)) for the futures whose task exists; None if the query fails."""
        futures = list(futures)
        try:
            self._check_open()
            ids = validate.task_ids(f.eq_task_id for f in futures)
            rows = {r[0]: r for r in self.queue.db.fetch_all("task_info", {"task_ids": ids})}
        except (*_FAILURES, _Closed):
            self._fail("task query")
            return None
        return [(f, pick(rows[f.eq_task_id])) for f in futures if f.eq_task_id in rows]

    def update_priorities(self, futures: Iterable[Future], new_priority: int | list[int]
                          ) -> tuple[ResultStatus, list[int]]:
        try:
            self._check_open()
            return ResultStatus.SUCCESS, self.queue.set_priorities([f.eq_task_id for f in futures], new_priority)
        except (*_FAILURES, _Closed):
            self._fail("update_priorities (nothing changed)")
            return ResultStatus.FAILURE, []

    def cancel_tasks(self, futures: Iterable[Future]) -> tuple[ResultStatus, list[int]]:
        try:
            self._check_open()
            return ResultStatus.SUCCESS, self.queue.cancel([f.eq_task_id for f in futures])
        except (*_FAILURES, _Closed):
            self._fail("cancel_tasks (nothing changed)")
            return ResultStatus.FAILURE, []

    def as_completed(self, futures: list[Future], pop: bool = False, timeout: float | None = None,
                     n: int | None = None, batch_size: int = 1, sleep: float = 0
                     ) -> Generator[Future, None, None]:
        """Yield futures as their tasks finish, each result read (and kept) as it is yielded.

        If the database fails (or the queue is closed), the rest are yielded at once, their
        result() then being (FAILURE, EQ_ABORT), as EQ-SQL does.
        """
        work = list(futures)
        target = len(work) if n is None else min(validate.count(n, "n", 1, 10**9), len(work))
        yielded: set[int] = set()
        for fut in self._finished_and_read(work, timeout, n, batch_size):
            if pop:
                futures.remove(fut)
            yielded.add(fut.eq_task_id)
            yield fut
        for fut in work:  # the database failed: every future not yielded yet, as EQ-SQL does
            if len(yielded) >= target:
                return
            if fut.eq_task_id not in yielded:
                if pop:
                    futures.remove(fut)
                yielded.add(fut.eq_task_id)
                yield fut

    def _finished_and_read(self, work: list[Future], timeout: float | None, n: int | None,
                           batch_size: int) -> Iterator[Future]:
        """The futures as they finish, each result read; ends early if the database fails."""
        if self._closed:
            self.logger.error("as_completed: the task queue is closed")
            return
        by_id = {f.eq_task_id: f for f in work}
        core = core_as_completed([f._core for f in work], timeout=timeout, n=n, batch_size=batch_size)
        try:
            while True:
                try:
                    done = next(core, None)
                    if done is None:
                        return
                    fut = by_id[done.task_id]
                    if fut._result is None:
                        fut._settle(self._read_rows([fut.eq_task_id])[fut.eq_task_id])
                except builtins.TimeoutError as exc:
                    raise TimeoutError(str(exc)) from None
                except (*_FAILURES, _Closed):
                    self._fail("as_completed")
                    return
                yield fut
        finally:
            close = getattr(core, "close", None)
            if close is not None:
                close()  # its completion watch, now rather than at garbage collection

    def pop_completed(self, futures: list[Future], timeout: float | None = None, sleep: float = 0) -> Future:
        return next(self.as_completed(futures, pop=True, timeout=timeout, n=1))

    def are_queues_empty(self, eq_type: int | None = None) -> bool:
        """EQ-SQL's answer: nothing queued, and no reported result left unread (of the type)."""
        task_type = None if eq_type is None else validate.task_type(eq_type)
        self._check_open()
        row = self.queue.db.fetch_one("compat_queues_empty", {"task_type": task_type})
        return bool(row and row[0])

    def clear_queues(self) -> None:
        """Cancel every queued task and count unread results read (a reset helper, as in
        EQ-SQL; not a way to cancel)."""
        self._check_open()
        self.queue.db.fetch_all("cancel_all_queued", {})
        self.queue.db.execute("compat_clear_unread", {})

    def stop_worker_pool(self, eq_type: int) -> ResultStatus:
        """Queue one EQ_STOP message of the type at priority -1: one pool stops on reading it
        (an eqflow pool drains)."""
        try:
            self._check_open()
            self.queue.submit(STOP_EXP_ID, eq_type, EQ_STOP, priority=-1, tag=EQ_STOP)
        except (*_FAILURES, _Closed):
            self._fail("stop_worker_pool")
            return ResultStatus.FAILURE
        return ResultStatus.SUCCESS

    # -- worker pool side ----------------------------------------------------------------------
    def query_task(self, eq_type: int, n: int = 1, worker_pool: str = "default", delay: float = 0.5,
                   timeout: float | None = 2.0) -> dict[str, Any] | list[dict[str, Any]]:
        try:
            self._check_open()
            tasks = self.queue.claim(eq_type, n=n, pool=worker_pool, timeout=timeout)
        except (*_FAILURES, _Closed):
            self._fail("query_task")
            return {"type": "status", "payload": EQ_ABORT}
        if not tasks:
            return {"type": "status", "payload": EQ_TIMEOUT}
        messages: list[dict[str, Any]] = []
        stops: list[tuple[ClaimedTask, str]] = []
        work: list[ClaimedTask] = []
        for task in tasks:
            if task.payload == EQ_STOP:
                stops.append((task, EQ_STOP))
                messages.append({"type": "status", "payload": EQ_STOP})
            else:
                work.append(task)
                messages.append({"type": "work", "eq_task_id": task.task_id, "payload": task.payload})
        self._keeper.hold(work)
        if stops:
            try:
                self.queue.report(stops)
            except _FAILURES:  # the stop is delivered; its lease lapses and it is read again
                self._fail("consuming EQ_STOP")
        return messages[0] if n == 1 else messages

    def query_more_tasks(self, eq_type: int, eq_task_ids: Iterable[int], batch_size: int, threshold: int = 1,
                         worker_pool: str = "default", delay: float = 0.5, timeout: float | None = 2.0
                         ) -> tuple[list[int], list[dict[str, Any]]]:
        if threshold < 1:
            raise ValueError(f"Invalid threshold: threshold must be greater than 0: threshold = {threshold}")
        if batch_size < 1:
            raise ValueError(f"Invalid batch_size: batch_size must be greater than 0: batch_size = {batch_size}")
        if threshold > batch_size:
            raise ValueError("Invalid threshold / batch_size: threshold of must be less than or equal to "
                             f"batch_size: threshold = {threshold}, batch_size = {batch_size}")
        ids = list(eq_task_ids)
        running: list[int] = []
        if ids:
            try:
                self._check_open()
                rows = self.queue.db.fetch_all("task_info", {"task_ids": validate.task_ids(ids)})
            except (*_FAILURES, _Closed):
                self._fail("query_more_tasks status query")
                return [], [{"type": "status", "payload": EQ_ABORT}]
            status = {r[0]: r[3] for r in rows}
            running = [t for t in ids if status.get(t) == CoreStatus.RUNNING.value]
        n_query = batch_size - len(running)
        if n_query < threshold:
            return running, []
        new = self.query_task(eq_type, n=n_query, worker_pool=worker_pool, delay=delay, timeout=timeout)
        messages = new if isinstance(new, list) else [new]
        return running + [m["eq_task_id"] for m in messages if "eq_task_id" in m], messages

    def report_task(self, eq_task_id: int, eq_type: int, result: str) -> ResultStatus:
        """Report a result. From the process that claimed the task the report must hold its
        lease; from elsewhere (EQ-SQL's Swift/T glue reports from a fresh queue) any running
        holder's is accepted, as EQ-SQL does."""
        claim_id = self._keeper.claim_of(eq_task_id)
        task = ClaimedTask(eq_task_id, "", eq_type, 0, "", None, 0, claim_id, "")
        try:
            self._check_open()
            accepted = self.queue.report([(task, result)])
        except (*_FAILURES, _Closed):
            self._fail("report_task")
            return ResultStatus.FAILURE
        if eq_task_id in accepted:
            _forget_everywhere(self.queue.url, eq_task_id)
            return ResultStatus.SUCCESS
        return ResultStatus.FAILURE


EQSQL = LocalTaskQueue  # EQ-SQL's older name (eqsql.eq.EQSQL)
TaskQueue = LocalTaskQueue  # the protocol EQ-SQL's code annotates with


# -- leases of claimed tasks, kept per process and database ------------------------------------

class _LeaseKeeper:
    """Extends the leases of tasks this process claimed through compat until they are reported
    (or their lease was lost), every third of a lease, in one statement; one daemon thread,
    running while it holds tasks."""

    def __init__(self, url: str, lease_s: float) -> None:
        self.url = url
        self.lease_s = lease_s
        self._held: dict[int, int] = {}  # task id -> claim id
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, tasks: list[ClaimedTask]) -> None:
        if not tasks:
            return
        with self._lock:
            for task in tasks:
                if task.claim_id is not None:
                    self._held[task.task_id] = task.claim_id
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="eqflow-compat-leases", daemon=True)
                self._thread.start()

    def forget(self, task_id: int) -> None:
        with self._lock:
            self._held.pop(task_id, None)

    def claim_of(self, task_id: int) -> int | None:
        with self._lock:
            return self._held.get(task_id)

    def _run(self) -> None:
        db = Connector(self.url, max_size=1, reconnect_timeout=self.lease_s / 3,
                       application_name="eqflow-compat-leases")
        stop = threading.Event()
        extended_at = time.monotonic()
        try:
            while True:
                stop.wait(self.lease_s / 3)
                with self._lock:
                    if not self._held:
                        self._thread = None
                        return
                    held = dict(self._held)
                try:
                    rows = db.fetch_all("extend_leases", {"task_ids": list(held), "claim_ids": list(held.values()),
                                                          "lease_s": self.lease_s})
                except _FAILURES as exc:
                    if time.monotonic() - extended_at <= self.lease_s:
                        log.warning("could not extend compat leases; retrying",
                                    extra={"count": len(held), "error": str(exc)})
                        continue
                    # The leases have run out meanwhile: the tasks went back to the queue (or the
                    # database is gone); holding on would only retry forever.
                    log.warning("compat leases lost: the database was unreachable longer than the lease",
                                extra={"count": len(held), "lease_s": self.lease_s})
                    rows = []
                extended_at = time.monotonic()
                kept = {r[0] for r in rows}
                with self._lock:  # reported elsewhere, canceled, or the lease was lost
                    for task_id, claim_id in held.items():
                        if task_id not in kept and self._held.get(task_id) == claim_id:
                            del self._held[task_id]
        finally:
            db.close()


_keepers: dict[tuple[int, str, float], _LeaseKeeper] = {}
_keepers_lock = threading.Lock()


def _keeper_for(url: str, lease_s: float) -> _LeaseKeeper:
    key = (os.getpid(), url, lease_s)  # a forked child gets its own
    with _keepers_lock:
        keeper = _keepers.get(key)
        if keeper is None:
            keeper = _keepers[key] = _LeaseKeeper(url, lease_s)
        return keeper


def _forget_everywhere(url: str, task_id: int) -> None:
    with _keepers_lock:
        keepers = [k for (pid, u, _), k in _keepers.items() if u == url and pid == os.getpid()]
    for keeper in keepers:
        keeper.forget(task_id)


def _lease_from_env() -> float:
    raw = os.environ.get(LEASE_ENV, "")
    if not raw:
        return DEFAULT_LEASE_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise errors.ConfigError(f"${LEASE_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


def init_task_queue(host: str | None, user: str | None, port: int | None, db_name: str | None,
                    password: str | None = None, retry_threshold: int = 0, log_level: int = logging.WARN,
                    *, lease_s: float | None = None) -> LocalTaskQueue:
    """EQ-SQL's entry point: a task queue on the given PostgreSQL database.

    Also takes EQ-SQL's older positional form ``(host, user, port, db_name, retry_threshold,
    log_level)``: an int where the password goes is a retry threshold. lease_s (eqflow): how
    long a claim outlives the process that holds it; default ``$EQFLOW_COMPAT_LEASE_S`` or 60.
    """
    if isinstance(password, int) and not isinstance(password, bool):
        password, retry_threshold, log_level = None, password, (retry_threshold or log_level)
    if password is not None and not isinstance(password, str):
        raise errors.InvalidInput(f"password must be a str, got {type(password).__name__}")
    lease = _lease_from_env() if lease_s is None else float(lease_s)
    if not lease > 0:
        raise errors.InvalidInput(f"lease_s must be > 0, got {lease_s!r}")
    log.setLevel(log_level)
    params: dict[str, Any] = {"host": host, "user": user, "port": port, "dbname": db_name, "password": password}
    url = psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})
    # EQ-SQL's Swift/T glue opens a queue per call: bring the schema up to date once per process.
    core = CoreQueue(url, lease_s=lease, reconnect_timeout=max(10.0, 5.0 * retry_threshold),
                     migrate=url not in _migrated)
    _migrated.add(url)
    return LocalTaskQueue(core, log)


_migrated: set[str] = set()
