"""Durable handles on tasks, and gathering them as they complete.

A Future is a task id plus what is already known about it: an ME process that restarts
re-attaches by asking the queue for its experiment's futures. ``as_completed`` costs one
query per wake-up for the whole set, and is woken by completion notifications.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from eqflow import validate
from eqflow.errors import InvalidInput, TaskCanceled, TaskFailed
from eqflow.models import FINAL_STATES, TaskStatus
from eqflow.notify import done_ids

# While completions stream in, a watch gathers them for a while before it looks them up: a
# batch-1 pool finishing 1,000 tasks/s would otherwise cost one query (and a wake-up of the ME's
# thread) for every task or two; the ME's side of each completion is the largest step of
# `benchmarks/commit_ceiling.py` between the worker API and the end to end. The window after a
# look-up is GATHER_S for each task it found, up to GATHER_MAX_S: it grows while each look-up
# finds more (faster than about one task per GATHER_S) and shrinks back to GATHER_S when
# completions thin out. A completion after a quiet spell (none within the window), or one that
# leaves nothing pending unheard of, is looked up at once.
GATHER_S = 0.002
GATHER_MAX_S = 0.010

if TYPE_CHECKING:
    from eqflow.queue import LocalTaskQueue


class Future:
    """The eventual result of one task. ``queue`` is the LocalTaskQueue or remote queue
    (service, Globus Compute) that submitted it."""

    __slots__ = ("queue", "task_id", "exp_id", "task_type", "tag", "_status", "_result", "_error", "_pool")

    def __init__(self, queue: Any, task_id: int, exp_id: str, task_type: int,
                 tag: str | None = None, status: TaskStatus = TaskStatus.QUEUED) -> None:
        self.queue = queue
        self.task_id = task_id
        self.exp_id = exp_id
        self.task_type = task_type
        self.tag = tag
        self._status = status
        self._result: str | None = None
        self._error: str | None = None
        self._pool: str | None = None

    def __repr__(self) -> str:
        return f"<Future task_id={self.task_id} type={self.task_type} status={self._status.value}>"

    # Completion state is cached once final: a finished task never changes again.
    def _settle(self, status: TaskStatus, result: str | None, error: str | None, pool: str | None) -> None:
        self._status, self._result, self._error, self._pool = status, result, error, pool

    @property
    def _final(self) -> bool:
        return self._status in FINAL_STATES

    def _refresh(self) -> None:
        if not self._final:
            info = self.queue.info([self.task_id])[self.task_id]
            self._settle(info.status, info.result, info.error, info.pool)

    @property
    def status(self) -> TaskStatus:
        self._refresh()
        return self._status

    def done(self) -> bool:
        return self.status in FINAL_STATES

    def result(self, timeout: float | None = None) -> str:
        """The task's result; waits up to ``timeout`` seconds (None: forever).

        Raises TimeoutError, TaskFailed or TaskCanceled (InvalidInput for a NaN or negative timeout).
        """
        timeout = validate.timeout(timeout)
        if not self._final:
            for _ in as_completed([self], timeout=timeout):
                pass
        if self._status is TaskStatus.FAILED:
            raise TaskFailed(self.task_id, self._error)
        if self._status is TaskStatus.CANCELED:
            raise TaskCanceled(self.task_id)
        return self._result  # type: ignore[return-value]

    def exception(self) -> str | None:
        """The error text of a failed task, or None."""
        self._refresh()
        return self._error

    @property
    def priority(self) -> int:
        return self.queue.info([self.task_id])[self.task_id].priority

    @priority.setter
    def priority(self, value: int) -> None:
        self.queue.set_priorities([self.task_id], value)

    @property
    def worker_pool(self) -> str | None:
        if self._final:
            return self._pool
        return self.queue.info([self.task_id])[self.task_id].pool

    def cancel(self) -> bool:
        """Cancel if still queued. True if the task is canceled now."""
        if self._status is TaskStatus.CANCELED:
            return True
        if self.task_id in self.queue.cancel([self.task_id]):
            self._settle(TaskStatus.CANCELED, None, None, self._pool)
            return True
        return False


def as_completed(futures: Sequence[Future], timeout: float | None = None, n: int | None = None,
                 pop: bool = False, batch_size: int = 1) -> Iterator[Future]:
    """Yield futures as their tasks finish (complete, failed or canceled).

    timeout: raise TimeoutError if the next batch is not ready within this many seconds of
        the call. n: stop after this many. pop: remove yielded futures from ``futures``
        (which must then be a list). batch_size: yield in groups of this size (the last group
        may be smaller).
    """
    timeout = validate.timeout(timeout)
    batch_size = validate.count(batch_size, "batch_size", 1, 1_000_000)
    if n is not None:
        n = validate.count(n, "n", 1, 10**9)
    if pop and not isinstance(futures, list):
        raise InvalidInput("pop=True needs futures to be a list")
    queues = {id(f.queue): f.queue for f in futures}
    if len(queues) > 1:
        raise InvalidInput("as_completed: all futures must come from the same task queue")
    target = len(futures) if n is None else min(n, len(futures))
    if target == 0 or not futures:
        return
    yield from _gather(next(iter(queues.values())), futures, target, timeout, pop, batch_size)


def _gather(queue: Any, futures: Sequence[Future], target: int, timeout: float | None,
            pop: bool, batch_size: int) -> Iterator[Future]:
    deadline = None if timeout is None else time.monotonic() + timeout
    ready = [f for f in futures if f._final]
    pending = {f.task_id: f for f in futures if not f._final}
    yielded = 0
    watch = queue.watch_completions({f.exp_id for f in pending.values()}) if pending else None
    try:
        while True:
            # Yield whole batches; the final partial batch once nothing more can come.
            while ready and (len(ready) >= batch_size or not pending or yielded + len(ready) >= target):
                take = min(batch_size, len(ready), target - yielded)
                batch, ready = ready[:take], ready[take:]
                for fut in batch:
                    if pop:
                        futures.remove(fut)  # type: ignore[attr-defined]
                    yielded += 1
                    yield fut
                if yielded >= target:
                    return
            if not pending:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"as_completed: {target - yielded} of {target} futures not done "
                                   f"after {timeout}s")
            assert watch is not None
            for task_id, status, result, error, pool in watch.finished(pending, remaining):
                if task_id in pending:
                    fut = pending.pop(task_id)
                    fut._settle(TaskStatus(status), result, error, pool)
                    ready.append(fut)
    finally:
        if watch is not None:
            watch.close()


class CompletionWatch(Protocol):
    """How a transport learns which futures finished."""

    def finished(self, pending: dict[int, Future], timeout: float | None) -> list[tuple[Any, ...]]:
        """(task_id, status, result, error, pool) of finished tasks among ``pending``; waits up
        to ``timeout`` (None: a while) for at least one, and may return [] on timeout."""
        ...

    def close(self) -> None: ...


class LocalCompletionWatch:
    """Woken by eqflow_done notifications; a full check first, after a reconnect, and on each
    safety poll; otherwise only the ids the notifications name are looked up."""

    def __init__(self, queue: LocalTaskQueue, exp_ids: set[str]) -> None:
        self.queue = queue
        self.inbox = queue._listener.subscribe("eqflow_done", exp_ids)
        self.candidates: set[int] | None = None  # None: check everything pending
        self._found_at = 0.0  # monotonic time of the last look-up that found finished tasks
        self._found_n = 0  # how many it found

    def finished(self, pending: dict[int, Future], timeout: float | None) -> list[tuple[Any, ...]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.candidates is None or self.candidates:
                check = list(pending) if self.candidates is None else [t for t in self.candidates if t in pending]
                self.candidates = set()
                rows = self.queue._finished_among(check)
                if rows:
                    self._found_at = time.monotonic()
                    self._found_n = len(rows)
                    return rows
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            wait = self.queue.safety_poll_s if remaining is None else min(remaining, self.queue.safety_poll_s)
            payloads, resync, woken = self.inbox.wait(wait)
            if resync or not woken:
                self.candidates = None  # safety poll or reconnect: one full check
                if not woken:
                    self.queue.rescue_expired_if_due()
            else:
                self.candidates = done_ids(payloads)
                self._gather_more(pending)

    def _gather_more(self, pending: dict[int, Future]) -> None:
        """Soon after a look-up that found some, wait out the rest of its window (see GATHER_S)
        and take what came meanwhile; not when every pending task is already heard of."""
        if self.candidates is None:
            return
        gap = self._found_at + min(GATHER_MAX_S, GATHER_S * self._found_n) - time.monotonic()
        if gap <= 0 or (len(pending) <= len(self.candidates)
                        and sum(1 for t in self.candidates if t in pending) >= len(pending)):
            return
        time.sleep(gap)
        payloads, resync, woken = self.inbox.wait(0)
        if resync:
            self.candidates = None
        elif woken:
            self.candidates |= done_ids(payloads)

    def close(self) -> None:
        self.inbox.close()


def pop_completed(futures: list[Future], timeout: float | None = None) -> Future:
    """Remove and return the first future of ``futures`` to finish."""
    for fut in as_completed(futures, timeout=timeout, n=1, pop=True):
        return fut
    raise InvalidInput("pop_completed: no futures given")
