"""EMEWS EQ-SQL's public task-queue API on top of eqflow.

Existing EQ-SQL ME scripts and Python worker pools port by changing one import::

    from eqflow.compat.eqsql import init_task_queue, ResultStatus, EQ_STOP, ...

Same names, arguments, ``(ResultStatus, value)`` returns and EQ_STOP/EQ_TIMEOUT/EQ_ABORT
messages. Underneath: eqflow's queue, so waits are woken by notifications (``delay`` and
``sleep`` arguments are accepted and ignored), bulk calls are one statement, and claimed
tasks are leased rather than deleted. Differences, all additive: a task that failed for good
has ``TaskStatus.FAILED`` and its ``result()`` is ``(FAILURE, EQ_ABORT)``.
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Generator, Iterable
from enum import IntEnum
from typing import Any

import psycopg

from eqflow import errors
from eqflow.futures import Future as CoreFuture
from eqflow.futures import as_completed as core_as_completed
from eqflow.models import ClaimedTask
from eqflow.models import TaskStatus as CoreStatus
from eqflow.queue import LocalTaskQueue as CoreQueue

log = logging.getLogger("eqflow.compat.eqsql")

EQ_ABORT = "EQ_ABORT"
EQ_TIMEOUT = "EQ_TIMEOUT"
EQ_STOP = "EQ_STOP"
ABORT_MSG = json.dumps({"type": "status", "payload": EQ_ABORT})

STOP_EXP_ID = "EQ_STOP"  # experiment that holds the stop messages
COMPAT_LEASE_S = 7 * 24 * 3600.0  # EQ-SQL pools do not heartbeat: a claim is held for a week


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


class Future:
    """EQ-SQL's Future: ``eq_task_id``, ``tag``, ``result()``, ``status``, ``priority``..."""

    def __init__(self, eq_sql: LocalTaskQueue, core: CoreFuture) -> None:
        self.eq_sql = eq_sql
        self._core = core
        self.eq_task_id = core.task_id
        self.tag = core.tag

    def __repr__(self) -> str:
        return f"<eqsql.Future eq_task_id={self.eq_task_id}>"

    def result(self, delay: float = 0.5, timeout: float | None = 2.0) -> tuple[ResultStatus, str]:
        return self.eq_sql.query_result(self.eq_task_id, delay, timeout)

    @property
    def status(self) -> TaskStatus:
        return _STATUS[self._core.status]

    @property
    def worker_pool(self) -> str | None:
        return self._core.worker_pool

    def cancel(self) -> bool:
        status, ids = self.eq_sql.cancel_tasks([self])
        return status == ResultStatus.SUCCESS and self.eq_task_id in ids or self.status == TaskStatus.CANCELED

    def done(self) -> bool:
        return self.status in (TaskStatus.COMPLETE, TaskStatus.CANCELED, TaskStatus.FAILED)

    @property
    def priority(self) -> int:
        return self._core.priority

    @priority.setter
    def priority(self, new_priority: int) -> None:
        self.eq_sql.update_priorities([self], new_priority)


class LocalTaskQueue:
    """EQ-SQL's LocalTaskQueue, backed by :class:`eqflow.LocalTaskQueue`."""

    def __init__(self, queue: CoreQueue) -> None:
        self.queue = queue
        self._claimed: dict[int, ClaimedTask] = {}

    def close(self) -> None:
        self.queue.close()

    # -- ME side ----------------------------------------------------------------------------
    def submit_task(self, exp_id: str, eq_type: int, payload: str, priority: int = 0,
                    tag: str | None = None) -> tuple[ResultStatus, Future | None]:
        status, futures = self.submit_tasks(exp_id, eq_type, [payload], priority, tag)
        return status, (futures[0] if futures else None)

    def submit_tasks(self, exp_id: str, eq_type: int, payload: list[str], priority: int = 0,
                     tag: str | None = None) -> tuple[ResultStatus, list[Future]]:
        try:
            core = self.queue.submit_many(exp_id, eq_type, payload, priority, tag)
        except errors.EqflowError:
            log.exception("submit_tasks failed; nothing was submitted")
            return ResultStatus.FAILURE, []
        return ResultStatus.SUCCESS, [Future(self, f) for f in core]

    def query_result(self, eq_task_id: int, delay: float = 0.5, timeout: float | None = 2.0
                     ) -> tuple[ResultStatus, str]:
        try:
            fut = CoreFuture(self.queue, eq_task_id, *self._exp_and_type(eq_task_id))
            for _ in core_as_completed([fut], timeout=timeout):
                pass
        except builtins.TimeoutError:
            return ResultStatus.FAILURE, EQ_TIMEOUT
        except errors.EqflowError:
            log.exception("query_result failed")
            return ResultStatus.FAILURE, EQ_ABORT
        if fut._status is CoreStatus.COMPLETE:
            return ResultStatus.SUCCESS, fut._result or ""
        return ResultStatus.FAILURE, EQ_ABORT

    def _exp_and_type(self, eq_task_id: int) -> tuple[str, int]:
        info = self.queue.info([eq_task_id])[eq_task_id]
        return info.exp_id, info.task_type

    def get_status(self, futures: Iterable[Future]) -> list[tuple[Future, TaskStatus]] | None:
        return self._per_future(futures, lambda i: _STATUS[i.status])

    def get_priorities(self, futures: Iterable[Future]) -> Any:
        result = self._per_future(futures, lambda i: i.priority)
        return ResultStatus.FAILURE if result is None else result

    def get_worker_pools(self, futures: Iterable[Future]) -> list[tuple[Future, str | None]] | None:
        return self._per_future(futures, lambda i: i.pool)

    def _per_future(self, futures: Iterable[Future], pick: Any) -> Any:
        futures = list(futures)
        try:
            infos = self.queue.info([f.eq_task_id for f in futures])
        except errors.EqflowError:
            log.exception("query failed")
            return None
        return [(f, pick(infos[f.eq_task_id])) for f in futures]

    def update_priorities(self, futures: Iterable[Future], new_priority: int | list[int]
                          ) -> tuple[ResultStatus, list[int]]:
        try:
            return ResultStatus.SUCCESS, self.queue.set_priorities([f.eq_task_id for f in futures], new_priority)
        except errors.EqflowError:
            log.exception("update_priorities failed; nothing changed")
            return ResultStatus.FAILURE, []

    def cancel_tasks(self, futures: Iterable[Future]) -> tuple[ResultStatus, list[int]]:
        try:
            return ResultStatus.SUCCESS, self.queue.cancel([f.eq_task_id for f in futures])
        except errors.EqflowError:
            log.exception("cancel_tasks failed; nothing changed")
            return ResultStatus.FAILURE, []

    def as_completed(self, futures: list[Future], pop: bool = False, timeout: float | None = None,
                     n: int | None = None, batch_size: int = 1, sleep: float = 0
                     ) -> Generator[Future, None, None]:
        by_id = {f.eq_task_id: f for f in futures}
        core = [f._core for f in futures]
        try:
            for done in core_as_completed(core, timeout=timeout, n=n, batch_size=batch_size):
                fut = by_id[done.task_id]
                if pop:
                    futures.remove(fut)
                yield fut
        except builtins.TimeoutError as exc:
            raise TimeoutError(str(exc)) from None

    def pop_completed(self, futures: list[Future], timeout: float | None = None, sleep: float = 0) -> Future:
        return next(self.as_completed(futures, pop=True, timeout=timeout, n=1))

    def are_queues_empty(self, eq_type: int | None = None) -> bool:
        """True when no task (of the type) is queued or running."""
        return self.queue.open_count(eq_type) == 0

    def clear_queues(self) -> None:
        """Cancel every queued task (a reset helper, as in EQ-SQL; not a way to cancel)."""
        self.queue.db.fetch_all("cancel_all_queued", {})

    def stop_worker_pool(self, eq_type: int) -> ResultStatus:
        """Queue one EQ_STOP message of the type at priority -1: one pool stops on reading it."""
        try:
            self.queue.submit(STOP_EXP_ID, eq_type, EQ_STOP, priority=-1, tag=EQ_STOP)
        except errors.EqflowError:
            log.exception("stop_worker_pool failed")
            return ResultStatus.FAILURE
        return ResultStatus.SUCCESS

    # -- worker pool side ----------------------------------------------------------------------
    def query_task(self, eq_type: int, n: int = 1, worker_pool: str = "default", delay: float = 0.5,
                   timeout: float | None = 2.0) -> dict[str, Any] | list[dict[str, Any]]:
        try:
            tasks = self.queue.claim(eq_type, n=n, pool=worker_pool, timeout=timeout,
                                     lease_s=max(self.queue.lease_s, COMPAT_LEASE_S))
        except errors.EqflowError:
            log.exception("query_task failed")
            return {"type": "status", "payload": EQ_ABORT}
        if not tasks:
            return {"type": "status", "payload": EQ_TIMEOUT}
        messages: list[dict[str, Any]] = []
        stops: list[tuple[ClaimedTask, str]] = []
        for task in tasks:
            if task.payload == EQ_STOP:
                stops.append((task, EQ_STOP))
                messages.append({"type": "status", "payload": EQ_STOP})
            else:
                self._claimed[task.task_id] = task
                messages.append({"type": "work", "eq_task_id": task.task_id, "payload": task.payload})
        if stops:
            self.queue.report(stops)
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
                infos = self.queue.info(ids)
            except errors.EqflowError:
                log.exception("query_more_tasks status query failed")
                return [], [{"type": "status", "payload": EQ_ABORT}]
            running = [t for t in ids if infos[t].status is CoreStatus.RUNNING]
        n_query = batch_size - len(running)
        if n_query < threshold:
            return running, []
        new = self.query_task(eq_type, n=n_query, worker_pool=worker_pool, delay=delay, timeout=timeout)
        messages = new if isinstance(new, list) else [new]
        return running + [m["eq_task_id"] for m in messages if "eq_task_id" in m], messages

    def report_task(self, eq_task_id: int, eq_type: int, result: str) -> ResultStatus:
        task = self._claimed.pop(eq_task_id, None)
        if task is None:  # claimed elsewhere: accept from whoever holds it, as EQ-SQL does
            task = ClaimedTask(eq_task_id, "", eq_type, 0, "", None, 0, None, "")
        try:
            accepted = self.queue.report([(task, result)])
        except errors.EqflowError:
            log.exception("report_task failed")
            return ResultStatus.FAILURE
        return ResultStatus.SUCCESS if eq_task_id in accepted else ResultStatus.FAILURE


def init_task_queue(host: str, user: str, port: int, db_name: str, password: str | None = None,
                    retry_threshold: int = 0, log_level: int = logging.WARN) -> LocalTaskQueue:
    """EQ-SQL's entry point: a task queue on the given PostgreSQL database."""
    log.setLevel(log_level)
    params: dict[str, Any] = {"host": host, "user": user, "port": port, "dbname": db_name}
    if password is not None:
        params["password"] = password
    url = psycopg.conninfo.make_conninfo(**params)
    return LocalTaskQueue(CoreQueue(url, reconnect_timeout=max(10.0, 5.0 * retry_threshold)))
