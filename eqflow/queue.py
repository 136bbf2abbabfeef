"""LocalTaskQueue: the client API, straight to PostgreSQL with psycopg 3.

Submit, claim, report, reprioritize, cancel, stop pools, re-attach: each is one statement,
whatever the number of tasks.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from eqflow import validate
from eqflow.db.arrays import IntArray
from eqflow.db.connector import Connector
from eqflow.db.resolve import resolve_url
from eqflow.errors import InvalidInput, UnknownTask
from eqflow.futures import Future, LocalCompletionWatch, as_completed, pop_completed
from eqflow.models import ClaimedTask, ExperimentEvent, PoolInfo, StopMode, TaskInfo, TaskStatus
from eqflow.notify import Inbox, listener_for, release_listener

log = logging.getLogger(__name__)

DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
# Runs right after a report's commit, in the same round trip: announces the tasks it accepted
# (see notify_done in sql/queries.sql).
ANNOUNCE: tuple[str, dict[str, Any]] = ("notify_done", {})


class LocalTaskQueue:
    """A task queue on a PostgreSQL database.

    url: ``postgresql://...``; None uses ``$EQFLOW_DB_URL`` or the embedded cluster.
    lease_s: how long a claim is held without a heartbeat before the task is requeued.
    safety_poll_s: the longest a waiter sleeps without a notification before checking anyway.
    reconnect_timeout: how long a call waits for an unreachable database before raising
    DatabaseUnavailable; None (the default) rides out an outage of any length.
    """

    def __init__(self, url: str | None = None, *, pool_size: int = 4,
                 max_payload_bytes: int = DEFAULT_MAX_PAYLOAD, lease_s: float = 60.0,
                 safety_poll_s: float = 5.0, reconnect_timeout: float | None = None,
                 max_attempts: int = 3, migrate: bool = True, create_db: bool = True) -> None:
        # Every argument is checked before the database is touched.
        self.max_payload_bytes = validate.count(max_payload_bytes, "max_payload_bytes", 1, 2**30 - 1)
        self.lease_s = validate.lease(lease_s)
        self.safety_poll_s = validate.seconds(safety_poll_s, "safety_poll_s", 86400.0)
        reconnect_timeout = validate.timeout(reconnect_timeout, "reconnect_timeout")  # None/inf: no limit
        pool_size = validate.count(pool_size, "pool_size", 1, 1000)
        self.max_attempts = validate.max_attempts(max_attempts)
        self.url = resolve_url(url, migrate=migrate, create=create_db)
        self.db = Connector(self.url, max_size=pool_size, reconnect_timeout=reconnect_timeout)
        self._listener = listener_for(self.url)
        self._closed = False
        self._work_inboxes: dict[tuple[int, ...], Inbox] = {}
        self._known_experiments: set[str] = set()
        self._last_rescue = 0.0
        self._rescue_lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        for inbox in self._work_inboxes.values():
            inbox.close()
        self._work_inboxes.clear()
        if not self._closed:
            self._closed = True
            release_listener(self.url)
        self.db.close()

    def __enter__(self) -> LocalTaskQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submit -------------------------------------------------------------------------------
    def submit(self, exp_id: str, task_type: int, payload: str, priority: int = 0,
               tag: str | None = None, max_attempts: int | None = None) -> Future:
        """Queue one task; returns its Future."""
        return self.submit_many(exp_id, task_type, [payload], priority, tag, max_attempts)[0]

    def submit_many(self, exp_id: str, task_type: int, payloads: Sequence[str],
                    priority: int | Sequence[int] = 0, tag: str | None | Sequence[str | None] = None,
                    max_attempts: int | None = None, idempotency_key: str | None = None) -> list[Future]:
        """Queue many tasks in one statement (all or nothing); Futures in payload order.

        priority and tag: one value for all, or a sequence with one per payload.
        idempotency_key: a repeated call with the same key returns the first call's tasks
        (and is retried safely after a lost connection).
        """
        exp_id = validate.exp_id(exp_id)
        task_type = validate.task_type(task_type)
        payloads = validate.as_sequence(payloads, "payloads")
        limit = self.max_payload_bytes
        checked = [validate.text(p, "payload", limit) for p in payloads]
        n = len(checked)
        if n == 0:
            return []
        priorities = validate.per_item(priority, n, "priority", lambda v: validate.int32(v, "priority"))
        tags = validate.per_item(tag, n, "tag", lambda v: validate.optional_text(v, "tag", validate.MAX_TAG))
        attempts = validate.max_attempts(max_attempts if max_attempts is not None else self.max_attempts)
        idem_key = validate.idempotency_key(idempotency_key)
        # Everything is checked above: from here on a failure is the database's, not the input's.
        self._ensure_experiment(exp_id)
        params = {"exp_id": exp_id, "task_type": task_type, "payloads": checked,
                  "priorities": IntArray(priorities), "tags": tags, "max_attempts": attempts}
        uniform = not isinstance(priority, (list, tuple)) and not isinstance(tag, (list, tuple))
        if idempotency_key is None and uniform:
            rows = self.db.fetch_all("submit_tasks_uniform", {
                "exp_id": exp_id, "task_type": task_type, "payloads": checked, "priority": priorities[0],
                "tag": tags[0], "max_attempts": attempts}, idempotent=False, binary=True)
        elif idempotency_key is None:
            rows = self.db.fetch_all("submit_tasks", params, idempotent=False)
        else:
            params["idem_key"] = idem_key
            try:
                rows = self.db.fetch_all("submit_tasks_once", params)
            except InvalidInput:  # lost the race on the key to an identical call: read its ids
                rows = self.db.fetch_all("submit_tasks_once", params)
        ids = sorted(r[0] for r in rows)  # identities are drawn in payload order
        if len(ids) != n:
            raise InvalidInput(f"idempotency key {idempotency_key!r} was used before for another submission "
                               f"({'another experiment' if not ids else f'{len(ids)} tasks'})")
        return [Future(self, tid, exp_id, task_type, t) for tid, t in zip(ids, tags, strict=True)]

    def _ensure_experiment(self, exp_id: str, config: str = "{}") -> None:
        if exp_id not in self._known_experiments:
            self.db.execute("upsert_experiment", {"exp_id": exp_id, "config": config})
            self._known_experiments.add(exp_id)

    def create_experiment(self, exp_id: str, config: dict[str, Any] | None = None) -> None:
        """Record an experiment and its config (submit does this implicitly)."""
        checked = validate.json_object(config, "config", self.max_payload_bytes)
        self._known_experiments.discard(validate.exp_id(exp_id))
        self._ensure_experiment(exp_id, checked)

    def experiment_status(self, exp_id: str) -> str | None:
        """The experiment's status ('running', 'finished', ...), or None if it was never created."""
        row = self.db.fetch_one("get_experiment", {"exp_id": validate.exp_id(exp_id)})
        return str(row[3]) if row else None

    def set_experiment_status(self, exp_id: str, status: str) -> None:
        self.db.execute("set_experiment_status", {"exp_id": validate.exp_id(exp_id),
                                                  "status": validate.label(status, "status")})

    def record_event(self, exp_id: str, kind: str, data: dict[str, Any] | None = None) -> ExperimentEvent:
        """Append to the experiment's event log (what the workflow did besides running tasks)."""
        text = validate.json_object(data, "event data")
        row = self.db.fetch_one("record_event", {"exp_id": validate.exp_id(exp_id),
                                                 "kind": validate.label(kind, "event kind"), "data": text},
                                idempotent=False)
        assert row is not None
        return ExperimentEvent(row[0], row[1], kind, dict(data or {}))

    def events(self, exp_id: str, kind: str | None = None) -> list[ExperimentEvent]:
        """The experiment's event log, oldest first (of one kind, or all)."""
        rows = self.db.fetch_all("experiment_events", {
            "exp_id": validate.exp_id(exp_id), "kind": validate.optional_text(kind, "event kind", 100)})
        return [ExperimentEvent(r[0], r[1], r[2], r[3]) for r in rows]

    # -- claim and report (the pool side) -------------------------------------------------------
    def claim(self, task_types: int | Iterable[int], n: int = 1, pool: str = "default",
              timeout: float | None = 0.0, lease_s: float | None = None) -> list[ClaimedTask]:
        """Claim up to n queued tasks of the given type(s), highest priority first.

        timeout: 0 returns at once; a number waits up to that long for work (woken by
        notification); None waits until work arrives. Returns [] on timeout.
        """
        types = validate.task_types(task_types)
        n = validate.count(n, "n")
        pool = validate.text(pool, "pool", 200)
        timeout = validate.timeout(timeout)
        lease = validate.optional_lease(lease_s, self.lease_s)
        deadline = None if timeout is None else time.monotonic() + timeout
        shared = self._work_inboxes.get(types)
        if timeout != 0 and shared is not None:
            return self._claim_waiting(shared, types, n, pool, lease, deadline)
        tasks = self._claim_now(types, n, pool, lease)
        if tasks or timeout == 0:
            return tasks
        # Only a claim that waits listens for new work: a worker kept busy is not woken by every
        # notification sent on the database (the listener drops the channel once nobody waits).
        with self._listener.subscribe("eqflow_queued", {str(t) for t in types}) as inbox:
            return self._claim_waiting(inbox, types, n, pool, lease, deadline)

    def _claim_waiting(self, inbox: Inbox, types: tuple[int, ...], n: int, pool: str, lease: float,
                       deadline: float | None) -> list[ClaimedTask]:
        while True:
            inbox.clear()
            tasks = self._claim_now(types, n, pool, lease)
            if tasks:
                return tasks
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            wait = self.safety_poll_s if remaining is None else min(remaining, self.safety_poll_s)
            _, _, woken = inbox.wait(wait)
            if not woken:
                self.rescue_expired_if_due()

    def work_inbox(self, task_types: int | Iterable[int]) -> Inbox:
        """The inbox woken when work of these types is queued, held until close() (claim() then
        waits on it too)."""
        return self._work_inbox(validate.task_types(task_types))

    def _work_inbox(self, types: tuple[int, ...]) -> Inbox:
        inbox = self._work_inboxes.get(types)
        if inbox is None:
            inbox = self._work_inboxes[types] = self._listener.subscribe(
                "eqflow_queued", {str(t) for t in types})
        return inbox

    def _claim_now(self, types: tuple[int, ...], n: int, pool: str, lease: float) -> list[ClaimedTask]:
        return [ClaimedTask(*row) for row in self._claim_rows(types, n, pool, lease)]

    def _claim_rows(self, types: tuple[int, ...], n: int, pool: str, lease: float) -> list[tuple[Any, ...]]:
        rows = self.db.fetch_all("claim_tasks", {"task_types": list(types), "n": n, "pool": pool, "lease_s": lease})
        return _claimed_rows(rows, pool)

    def report(self, results: Iterable[tuple[ClaimedTask, str]]) -> set[int]:
        """Complete claimed tasks with their results, in one statement.

        Returns the ids accepted. A report is accepted only from the current lease holder;
        a task whose lease was lost (requeued, reclaimed, canceled) is left as it is.
        Reporting twice is harmless.
        """
        pairs = list(results)
        if not pairs:
            return set()
        ids, held = _held((task for task, _ in pairs), "report")
        texts = [validate.text(result, "result", self.max_payload_bytes) for _, result in pairs]
        rows = self.db.fetch_all("report_results", {**held, "results": texts}, then=ANNOUNCE)
        accepted = {r[0] for r in rows}
        if len(accepted) < len(set(ids)):
            log.warning("reports rejected: lease no longer held",
                        extra={"task_ids": sorted(set(ids) - accepted)[:20]})
        return accepted

    def report_and_claim(self, results: Iterable[tuple[ClaimedTask, str]], task_types: int | Iterable[int],
                         n: int = 1, pool: str = "default",
                         lease_s: float | None = None) -> tuple[set[int], list[ClaimedTask]]:
        """report() and claim(timeout=0) in one statement and one commit: a worker at steady
        state spends one transaction per task (or batch) instead of two.

        Returns (ids accepted, tasks claimed). n may be 0 (report only); the reports follow
        report()'s rules (only the current lease holder's count). Never waits for work: call
        claim() with a timeout when this comes back empty-handed.
        """
        pairs = list(results)
        ids, claims = validate.held((task for task, _ in pairs), "report_and_claim")
        accepted, rows = self._report_and_claim_rows(ids, claims, [r for _, r in pairs], task_types, n, pool,
                                                     lease_s)
        return accepted, [ClaimedTask(*row) for row in rows]

    def _report_and_claim_rows(self, ids: list[int], claims: list[int | None], results: list[Any],
                               task_types: int | Iterable[int], n: int, pool: str,
                               lease_s: float | None) -> tuple[set[int], list[tuple[Any, ...]]]:
        """report_and_claim for task and claim ids already checked (the service gets them as
        numbers, not as ClaimedTasks); the tasks claimed come as rows of ClaimedTask's fields."""
        types = validate.task_types(task_types)
        n = validate.count(n, "n", 0)
        pool = validate.text(pool, "pool", 200)
        lease = validate.optional_lease(lease_s, self.lease_s)
        texts = [validate.text(result, "result", self.max_payload_bytes) for result in results]
        if not ids:
            return set(), (self._claim_rows(types, n, pool, lease) if n else [])
        rows = self.db.fetch_all("report_and_claim", {
            "task_ids": IntArray(ids), "claim_ids": IntArray(claims), "results": texts, "n": n, "pool": pool,
            "lease_s": lease, "task_types": list(types)}, then=ANNOUNCE)
        accepted = {r[1] for r in rows if not r[0]}
        if len(accepted) < len(set(ids)):
            log.warning("reports rejected: lease no longer held",
                        extra={"task_ids": sorted(set(ids) - accepted)[:20]})
        return accepted, _claimed_rows([r[1:] for r in rows if r[0]], pool)

    def report_failure(self, failures: Iterable[tuple[ClaimedTask, str]], retry: bool = True) -> dict[int, TaskStatus]:
        """Report failed runs. With retry, a task goes back to the queue until its
        max_attempts are spent, then fails for good with the error kept.

        Returns the new status of each accepted task.
        """
        retry = validate.boolean(retry, "retry")
        pairs = list(failures)
        if not pairs:
            return {}
        ids, held = _held((task for task, _ in pairs), "report_failure")
        errors = [validate.text(e, "error", self.max_payload_bytes) for _, e in pairs]
        rows = self.db.fetch_all("report_failures", {
            **held, "errors": errors, "retry": [retry] * len(ids)})
        return {tid: TaskStatus(status) for tid, status in rows}

    def release(self, tasks: Iterable[ClaimedTask], *, unstarted: bool = False) -> set[int]:
        """Give claimed tasks back to the queue unfinished (a pool that stops). Not a failure.
        Their runs still count in ``attempts`` unless ``unstarted`` (never handed to a worker)."""
        ids, held = _held(tasks, "release")
        if not ids:
            return set()
        rows = self.db.fetch_all("release_tasks", {**held, "unstarted": bool(unstarted)})
        return {r[0] for r in rows}

    def extend_leases(self, tasks: Iterable[ClaimedTask], lease_s: float | None = None) -> set[int]:
        """Heartbeat: extend the leases of held tasks in one statement; returns ids still held."""
        lease = validate.optional_lease(lease_s, self.lease_s)
        ids, held = _held(tasks, "extend_leases")
        if not ids:
            return set()
        rows = self.db.fetch_all("extend_leases", {**held, "lease_s": lease})
        return {r[0] for r in rows}

    def rescue_expired(self) -> dict[int, TaskStatus]:
        """Requeue (or fail, after max_attempts) every task whose lease expired."""
        rows = self.db.fetch_all("rescue_expired", {})
        if rows:
            log.info("expired leases rescued", extra={"count": len(rows)})
        return {tid: TaskStatus(status) for tid, status in rows}

    def rescue_expired_if_due(self) -> None:
        """rescue_expired at most once per quarter lease, from whichever waiter is idle."""
        now = time.monotonic()
        with self._rescue_lock:
            if now - self._last_rescue < self.lease_s / 4:
                return
            self._last_rescue = now
        self.rescue_expired()

    # -- the ME side: state of many tasks ---------------------------------------------------------
    def info(self, tasks: Iterable[Any]) -> dict[int, TaskInfo]:
        """Snapshot of many tasks in one query. Raises UnknownTask for ids that do not exist."""
        ids = validate.task_ids(tasks)
        rows = self.db.fetch_all("task_info", {"task_ids": IntArray(ids)})
        found = {r[0]: TaskInfo(r[0], r[1], r[2], TaskStatus(r[3]), *r[4:]) for r in rows}
        missing = set(ids) - found.keys()
        if missing:
            raise UnknownTask(list(missing))
        return found

    def watch_completions(self, exp_ids: set[str]) -> LocalCompletionWatch:
        return LocalCompletionWatch(self, exp_ids)

    def wait_finished(self, task_ids: list[int], exp_ids: set[str], timeout: float) -> list[tuple[Any, ...]]:
        """Finished tasks among ``task_ids``, waiting up to ``timeout`` for at least one."""
        pending: dict[int, Any] = dict.fromkeys(validate.task_ids(task_ids))
        wait = validate.timeout(timeout)
        watch = self.watch_completions({validate.exp_id(e) for e in exp_ids})
        try:
            return watch.finished(pending, wait)
        finally:
            watch.close()

    def _finished_among(self, task_ids: list[int]) -> list[tuple[Any, ...]]:
        if not task_ids:
            return []
        return self.db.fetch_all("finished_among", {"task_ids": IntArray(task_ids)})

    def set_priorities(self, tasks: Iterable[Any], priority: int | Sequence[int]) -> list[int]:
        """Reprioritize queued tasks in one statement: one value for all, or one per task.

        Returns the ids changed: queued tasks whose priority differs (a task that has it already
        is not written; running and finished tasks keep theirs). All or nothing:
        an unknown id raises UnknownTask and nothing changes.
        """
        ids = validate.task_ids(tasks)
        if not ids:
            return []
        if isinstance(priority, (list, tuple)):
            prios = validate.per_item(priority, len(ids), "priority", lambda v: validate.int32(v, "priority"))
            merged = dict(zip(ids, prios, strict=True))  # a repeated id takes its last priority
            rows = self.db.fetch_all("set_priorities", {
                "task_ids": IntArray(merged), "priorities": IntArray(merged.values())})
        else:
            rows = self.db.fetch_all("set_priority", {
                "task_ids": IntArray(ids), "priority": validate.int32(priority, "priority")})
        return _changed(rows)

    def cancel(self, tasks: Iterable[Any]) -> list[int]:
        """Cancel queued tasks in one statement; returns the ids canceled. All or nothing."""
        ids = validate.task_ids(tasks)
        if not ids:
            return []
        return _changed(self.db.fetch_all("cancel_tasks", {"task_ids": IntArray(ids)}))

    def stats(self, exp_id: str | None = None) -> dict[int, dict[str, int]]:
        """Task counts per type and status, for one experiment or all."""
        rows = self.db.fetch_all("queue_stats", {"exp_id": None if exp_id is None else validate.exp_id(exp_id)})
        out: dict[int, dict[str, int]] = {}
        for task_type, status, count in rows:
            out.setdefault(task_type, {})[status] = count
        return out

    def open_count(self, task_type: int | None = None) -> int:
        """Tasks queued or running (of a type, or of all)."""
        row = self.db.fetch_one("count_open", {
            "task_type": None if task_type is None else validate.task_type(task_type)})
        return int(row[0]) if row else 0

    def experiment_futures(self, exp_id: str) -> list[Future]:
        """Re-attach: Futures for every task of an experiment, in submission order."""
        rows = self.db.fetch_all("experiment_tasks", {"exp_id": validate.exp_id(exp_id)})
        futures = []
        for tid, exp, typ, status, tag, result, error, pool in rows:
            fut = Future(self, tid, exp, typ, tag)
            fut._settle(TaskStatus(status), result, error, pool)
            futures.append(fut)
        return futures

    def as_completed(self, futures: Sequence[Future], timeout: float | None = None, n: int | None = None,
                     pop: bool = False, batch_size: int = 1) -> Any:
        return as_completed(futures, timeout=timeout, n=n, pop=pop, batch_size=batch_size)

    def pop_completed(self, futures: list[Future], timeout: float | None = None) -> Future:
        return pop_completed(futures, timeout=timeout)

    # -- pools ------------------------------------------------------------------------------------
    def register_pool(self, name: str, task_types: Iterable[int], *, n_workers: int = 1,
                      launcher: str = "local", job_id: str | None = None,
                      info: dict[str, Any] | None = None) -> int:
        row = self.db.fetch_one("register_pool", {
            "name": validate.text(name, "pool name", 200), "task_types": list(validate.task_types(task_types)),
            "launcher": validate.text(launcher, "launcher", 200), "host": socket.gethostname(),
            "pid": os.getpid(), "job_id": validate.optional_text(job_id, "job_id", 200),
            "n_workers": validate.count(n_workers, "n_workers", 1, 100_000),
            "info": validate.json_object(info, "pool info")}, idempotent=False)
        assert row is not None
        return int(row[0])

    def pool_heartbeat(self, pool_id: int) -> StopMode | None:
        """Record that a pool is alive; returns a pending stop request, if any."""
        row = self.db.fetch_one("pool_heartbeat", {"pool_id": validate.id64(pool_id, "pool_id")})
        return StopMode(row[0]) if row and row[0] else None

    def pool_stopped(self, pool_id: int) -> None:
        self.db.execute("pool_stopped", {"pool_id": validate.id64(pool_id, "pool_id")})

    def stop_pools(self, task_type: int | Iterable[int], mode: StopMode | str = StopMode.DRAIN) -> list[str]:
        """Tell the running pools of a type to stop: drain (finish the queue) or now."""
        checked = validate.stop_mode(mode)
        rows = self.db.fetch_all("request_pool_stop", {
            "mode": checked.value, "task_types": list(validate.task_types(task_type))})
        return [name for _, name in rows]

    def pools(self, active_only: bool = False) -> list[PoolInfo]:
        rows = self.db.fetch_all("list_pools", {"active_only": validate.boolean(active_only, "active_only")})
        return [PoolInfo(pool_id=r[0], name=r[1], task_types=r[2], launcher=r[3], host=r[4], pid=r[5],
                         job_id=r[6], status=r[7], n_workers=r[8], stop_requested=StopMode(r[9]) if r[9] else None,
                         started_at=r[10], heartbeat_at=r[11], stopped_at=r[12]) for r in rows]

    def pool_inbox(self, pool_id: int) -> Inbox:
        """An inbox woken when this pool is told to stop."""
        return self._listener.subscribe("eqflow_pool", {str(validate.id64(pool_id, "pool_id"))})


def _claimed_rows(rows: list[tuple[Any, ...]], pool: str) -> list[tuple[Any, ...]]:
    """Claimed tasks (task_id, exp_id, task_type, priority, payload, tag, attempt, claim_id) with
    their pool: ClaimedTask's fields, highest priority first."""
    out = [(*row, pool) for row in rows]
    out.sort(key=lambda row: (-row[3], row[0]))
    return out


def _held(tasks: Iterable[Any], what: str) -> tuple[list[int], dict[str, IntArray]]:
    """validate.held's task ids, and the task and claim ids as the statements' parameters."""
    ids, claims = validate.held(tasks, what)
    return ids, {"task_ids": IntArray(ids), "claim_ids": IntArray(claims)}


def _changed(rows: list[tuple[Any, ...]]) -> list[int]:
    """The ids a reprioritize or cancel changed (an unknown id raised UnknownTask instead)."""
    return sorted(r[0] for r in rows)
