"""What the remote transports share: the operations a server runs for a client (``run_op``),
and the client base class (``RemoteTaskQueue``) that gives them LocalTaskQueue's API.

The EMEWS service runs ``run_op`` behind its routes; the Globus Compute queue runs it inside
a function on the endpoint. Errors travel as ``{"type": ..., "message": ...}`` and are raised
again on the client as the same eqflow exception.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, fields
from datetime import datetime
from typing import Any

from eqflow import errors, validate
from eqflow.futures import CompletionWatch, Future, as_completed, pop_completed
from eqflow.models import ClaimedTask, ExperimentEvent, PoolInfo, StopMode, TaskInfo, TaskStatus
from eqflow.queue import LocalTaskQueue

MAX_WAIT_S = 25.0  # longest a remote call blocks (claim, completions) before answering
CLAIMED_FIELDS = tuple(f.name for f in fields(ClaimedTask))


def _capped_wait(timeout: Any) -> float:
    """A client's wait, checked (NaN and negatives are refused) and capped at MAX_WAIT_S."""
    wait = validate.timeout(timeout)
    return MAX_WAIT_S if wait is None else min(wait, MAX_WAIT_S)


def _claim(q: LocalTaskQueue, task_types: list[int], n: int = 1, pool: str = "default",
           timeout: float = 0.0, lease_s: float | None = None) -> dict[str, Any]:
    wait = min(validate.timeout(timeout) or 0.0, MAX_WAIT_S)
    return {"tasks": [_task_dict(t) for t in q.claim(task_types, n=n, pool=pool, timeout=wait, lease_s=lease_s)]}


def _report_and_claim(q: LocalTaskQueue, results: list[dict[str, Any]], task_types: list[int], n: int = 1,
                      pool: str = "default", lease_s: float | None = None) -> dict[str, Any]:
    ids, claims = _lease_ids(results)
    accepted, rows = q._report_and_claim_rows(ids, claims, [r["result"] for r in results], task_types, n, pool,
                                              lease_s)
    return {"accepted": sorted(accepted), "tasks": [dict(zip(CLAIMED_FIELDS, row, strict=True)) for row in rows]}


def _task_dict(task: ClaimedTask) -> dict[str, Any]:
    """A claimed task as JSON fields: dataclasses.asdict's fields, without its recursive copy of
    each value (8.8 us per task against 0.3 us here; the service hands out thousands a second)."""
    return {"task_id": task.task_id, "exp_id": task.exp_id, "task_type": task.task_type,
            "priority": task.priority, "payload": task.payload, "tag": task.tag, "attempt": task.attempt,
            "claim_id": task.claim_id, "pool": task.pool}


def _lease_ids(tasks: list[dict[str, Any]]) -> tuple[list[int], list[int | None]]:
    """The task and claim ids of a report, a release or a heartbeat, checked."""
    ids = validate.task_ids(t["task_id"] for t in tasks)
    claims = [t.get("claim_id") for t in tasks]
    if any(c is not None and not 0 <= c < 2**63 for c in claims):
        raise errors.InvalidInput("claim ids must be None or 64-bit non-negative ints")
    return ids, claims


def _leases(tasks: list[dict[str, Any]]) -> list[ClaimedTask]:
    ids, claims = _lease_ids(tasks)
    return [ClaimedTask(tid, "", 0, 0, "", None, 0, c, "") for tid, c in zip(ids, claims, strict=True)]


def _info(q: LocalTaskQueue, task_ids: list[int]) -> dict[str, Any]:
    return {"tasks": [_info_dict(i) for i in q.info(task_ids).values()]}


def _info_dict(info: TaskInfo) -> dict[str, Any]:
    out = asdict(info)
    out["status"] = info.status.value
    for key in ("created_at", "started_at", "finished_at"):
        out[key] = out[key].isoformat() if out[key] else None
    return out


def _pools(q: LocalTaskQueue, active_only: bool = False) -> dict[str, Any]:
    rows = []
    for p in q.pools(active_only=active_only):
        row = asdict(p)
        row["stop_requested"] = p.stop_requested.value if p.stop_requested else None
        for key in ("started_at", "heartbeat_at", "stopped_at"):
            row[key] = row[key].isoformat() if row[key] else None
        rows.append(row)
    return {"pools": rows}


def _event_dict(event: ExperimentEvent) -> dict[str, Any]:
    return {"event_id": event.event_id, "at": event.at.isoformat(), "kind": event.kind, "data": event.data}


def _event(row: dict[str, Any]) -> ExperimentEvent:
    return ExperimentEvent(row["event_id"], datetime.fromisoformat(row["at"]), row["kind"], row["data"])


OPS: dict[str, Callable[..., dict[str, Any]]] = {
    "submit": lambda q, exp_id, task_type, payloads, priority=0, tag=None, max_attempts=None, idempotency_key=None: {
        "task_ids": [f.task_id for f in q.submit_many(exp_id, task_type, payloads, priority, tag, max_attempts,
                                                       idempotency_key)]},
    "claim": _claim,
    "report_and_claim": _report_and_claim,
    "report": lambda q, results: {"accepted": sorted(q.report(
        [(t, r["result"]) for t, r in zip(_leases(results), results, strict=True)]))},
    "report_failure": lambda q, failures, retry=True: {"statuses": {
        str(k): v.value for k, v in q.report_failure(
            [(t, f["error"]) for t, f in zip(_leases(failures), failures, strict=True)], retry).items()}},
    "release": lambda q, tasks: {"released": sorted(q.release(_leases(tasks)))},
    "extend_leases": lambda q, tasks, lease_s=None: {"held": sorted(q.extend_leases(_leases(tasks), lease_s))},
    "info": _info,
    "set_priorities": lambda q, task_ids, priority: {"changed": q.set_priorities(task_ids, priority)},
    "cancel": lambda q, task_ids: {"canceled": q.cancel(task_ids)},
    "stats": lambda q, exp_id=None: {"stats": {str(k): v for k, v in q.stats(exp_id).items()}},
    "open_count": lambda q, task_type=None: {"count": q.open_count(task_type)},
    "experiment_tasks": lambda q, exp_id: {"tasks": [
        {"task_id": f.task_id, "exp_id": f.exp_id, "task_type": f.task_type, "tag": f.tag,
         "status": f._status.value, "result": f._result, "error": f._error, "pool": f._pool}
        for f in q.experiment_futures(exp_id)]},
    "wait_finished": lambda q, task_ids, exp_ids, timeout=0.0: {"finished": [
        list(r) for r in q.wait_finished(task_ids, set(exp_ids), _capped_wait(timeout))]},
    "stop_pools": lambda q, task_type, mode="drain": {"pools": q.stop_pools(task_type, mode)},
    "pools": _pools,
    "rescue_expired": lambda q: {"rescued": {str(k): v.value for k, v in q.rescue_expired().items()}},
    "experiment_status": lambda q, exp_id: {"status": q.experiment_status(exp_id)},
    "set_experiment_status": lambda q, exp_id, status: q.set_experiment_status(exp_id, status) or {},
    "record_event": lambda q, exp_id, kind, data=None: _event_dict(q.record_event(exp_id, kind, data)),
    "events": lambda q, exp_id, kind=None: {"events": [_event_dict(e) for e in q.events(exp_id, kind)]},
}


def run_op(queue: LocalTaskQueue, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run one operation for a remote client; eqflow errors come back as data."""
    fn = OPS.get(op)
    if fn is None:
        return {"error": {"type": "InvalidInput", "message": f"unknown operation {op!r}"}}
    try:
        return fn(queue, **args)
    except TypeError as exc:  # wrong or missing arguments
        return {"error": {"type": "InvalidInput", "message": f"{op}: {exc}"}}
    except errors.EqflowError as exc:
        return {"error": error_dict(exc)}


def error_dict(exc: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, errors.UnknownTask):
        out["task_ids"] = exc.task_ids
    return out


def raise_error(error: dict[str, Any]) -> None:
    kind = error.get("type", "EqflowError")
    message = error.get("message", "remote error")
    if kind == "UnknownTask":
        raise errors.UnknownTask(error.get("task_ids", []))
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, errors.EqflowError) and cls not in (errors.TaskFailed,
                                                                                  errors.TaskCanceled):
        raise cls(message)
    raise errors.EqflowError(f"{kind}: {message}")


class RemoteTaskQueue:
    """LocalTaskQueue's API over a transport. Subclasses implement ``_op``."""

    safety_poll_s = MAX_WAIT_S

    def __init__(self, max_payload_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_payload_bytes = max_payload_bytes

    def _op(self, op: str, args: dict[str, Any], *, idempotent: bool = True) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> RemoteTaskQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submit ---------------------------------------------------------------------------------
    def submit(self, exp_id: str, task_type: int, payload: str, priority: int = 0, tag: str | None = None,
               max_attempts: int | None = None) -> Future:
        return self.submit_many(exp_id, task_type, [payload], priority, tag, max_attempts)[0]

    def submit_many(self, exp_id: str, task_type: int, payloads: Sequence[str],
                    priority: int | Sequence[int] = 0, tag: str | None | Sequence[str | None] = None,
                    max_attempts: int | None = None, idempotency_key: str | None = None) -> list[Future]:
        """As LocalTaskQueue.submit_many; an idempotency key is always sent, so a retry after a
        lost reply cannot submit twice. Every argument is checked here first, as LocalTaskQueue
        checks it: a NaN or a lone surrogate never reaches the JSON encoder or the server."""
        validate.exp_id(exp_id)
        validate.task_type(task_type)
        payloads = [validate.text(p, "payload", self.max_payload_bytes) for p in validate.as_sequence(payloads,
                                                                                                      "payloads")]
        if not payloads:
            return []
        priorities = validate.per_item(priority, len(payloads), "priority", lambda v: validate.int32(v, "priority"))
        tags = validate.per_item(tag, len(payloads), "tag",
                                 lambda v: validate.optional_text(v, "tag", validate.MAX_TAG))
        if max_attempts is not None:
            validate.max_attempts(max_attempts)
        key = validate.idempotency_key(idempotency_key)
        out = self._op("submit", {"exp_id": exp_id, "task_type": task_type, "payloads": payloads,
                                  "priority": priorities if isinstance(priority, (list, tuple)) else priorities[0],
                                  "tag": tags, "max_attempts": max_attempts,
                                  "idempotency_key": key or uuid.uuid4().hex})
        return [Future(self, tid, exp_id, task_type, t) for tid, t in zip(out["task_ids"], tags, strict=True)]

    # -- pool side ----------------------------------------------------------------------------------
    def claim(self, task_types: int | Iterable[int], n: int = 1, pool: str = "default",
              timeout: float | None = 0.0, lease_s: float | None = None) -> list[ClaimedTask]:
        types = list(validate.task_types(task_types))
        validate.count(n, "n")
        validate.text(pool, "pool", 200)
        timeout = validate.timeout(timeout)
        if lease_s is not None:
            lease_s = validate.lease(lease_s)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = MAX_WAIT_S if deadline is None else max(0.0, deadline - time.monotonic())
            out = self._op("claim", {"task_types": types, "n": n, "pool": pool,
                                     "timeout": min(remaining, MAX_WAIT_S), "lease_s": lease_s})
            tasks = [ClaimedTask(**t) for t in out["tasks"]]
            if tasks or (deadline is not None and time.monotonic() >= deadline):
                return tasks

    def report(self, results: Iterable[tuple[ClaimedTask, str]]) -> set[int]:
        pairs = list(results)
        ids, claims = validate.held((t for t, _ in pairs), "report")
        body = [{"task_id": tid, "claim_id": c, "result": validate.text(r, "result", self.max_payload_bytes)}
                for tid, c, (_, r) in zip(ids, claims, pairs, strict=True)]
        return set(self._op("report", {"results": body})["accepted"]) if body else set()

    def report_failure(self, failures: Iterable[tuple[ClaimedTask, str]], retry: bool = True) -> dict[int, TaskStatus]:
        validate.boolean(retry, "retry")
        pairs = list(failures)
        ids, claims = validate.held((t for t, _ in pairs), "report_failure")
        body = [{"task_id": tid, "claim_id": c, "error": validate.text(e, "error", self.max_payload_bytes)}
                for tid, c, (_, e) in zip(ids, claims, pairs, strict=True)]
        if not body:
            return {}
        out = self._op("report_failure", {"failures": body, "retry": retry})["statuses"]
        return {int(k): TaskStatus(v) for k, v in out.items()}

    def release(self, tasks: Iterable[ClaimedTask]) -> set[int]:
        body = [{"task_id": tid, "claim_id": c} for tid, c in zip(*validate.held(tasks, "release"), strict=True)]
        return set(self._op("release", {"tasks": body})["released"]) if body else set()

    def extend_leases(self, tasks: Iterable[ClaimedTask], lease_s: float | None = None) -> set[int]:
        if lease_s is not None:
            lease_s = validate.lease(lease_s)
        body = [{"task_id": tid, "claim_id": c}
                for tid, c in zip(*validate.held(tasks, "extend_leases"), strict=True)]
        return set(self._op("extend_leases", {"tasks": body, "lease_s": lease_s})["held"]) if body else set()

    # -- ME side ------------------------------------------------------------------------------------
    def info(self, tasks: Iterable[Any]) -> dict[int, TaskInfo]:
        ids = validate.task_ids(tasks)
        out = {}
        for row in self._op("info", {"task_ids": ids})["tasks"]:
            row["status"] = TaskStatus(row["status"])
            for key in ("created_at", "started_at", "finished_at"):
                row[key] = datetime.fromisoformat(row[key]) if row[key] else None
            out[row["task_id"]] = TaskInfo(**row)
        return out

    def set_priorities(self, tasks: Iterable[Any], priority: int | Sequence[int]) -> list[int]:
        ids = validate.task_ids(tasks)
        if isinstance(priority, (list, tuple)):
            prio: int | list[int] = validate.per_item(priority, len(ids), "priority",
                                                      lambda v: validate.int32(v, "priority"))
        else:
            prio = validate.int32(priority, "priority")
        return list(self._op("set_priorities", {"task_ids": ids, "priority": prio})["changed"]) if ids else []

    def cancel(self, tasks: Iterable[Any]) -> list[int]:
        ids = validate.task_ids(tasks)
        return list(self._op("cancel", {"task_ids": ids})["canceled"]) if ids else []

    def stats(self, exp_id: str | None = None) -> dict[int, dict[str, int]]:
        checked = None if exp_id is None else validate.exp_id(exp_id)
        return {int(k): v for k, v in self._op("stats", {"exp_id": checked})["stats"].items()}

    def open_count(self, task_type: int | None = None) -> int:
        checked = None if task_type is None else validate.task_type(task_type)
        return int(self._op("open_count", {"task_type": checked})["count"])

    def experiment_futures(self, exp_id: str) -> list[Future]:
        futures = []
        for row in self._op("experiment_tasks", {"exp_id": validate.exp_id(exp_id)})["tasks"]:
            fut = Future(self, row["task_id"], row["exp_id"], row["task_type"], row["tag"])
            fut._settle(TaskStatus(row["status"]), row["result"], row["error"], row["pool"])
            futures.append(fut)
        return futures

    def _finished_among(self, task_ids: list[int]) -> list[tuple[Any, ...]]:
        return self.wait_finished(task_ids, set(), 0.0)

    def wait_finished(self, task_ids: list[int], exp_ids: set[str], timeout: float) -> list[tuple[Any, ...]]:
        wait = validate.timeout(timeout)
        out = self._op("wait_finished", {"task_ids": validate.task_ids(task_ids),
                                         "exp_ids": sorted(validate.exp_id(e) for e in exp_ids),
                                         "timeout": MAX_WAIT_S if wait is None else min(wait, MAX_WAIT_S)})
        return [tuple(r) for r in out["finished"]]

    def watch_completions(self, exp_ids: set[str]) -> CompletionWatch:
        return RemoteCompletionWatch(self, exp_ids)

    def as_completed(self, futures: Sequence[Future], timeout: float | None = None, n: int | None = None,
                     pop: bool = False, batch_size: int = 1) -> Any:
        return as_completed(futures, timeout=timeout, n=n, pop=pop, batch_size=batch_size)

    def pop_completed(self, futures: list[Future], timeout: float | None = None) -> Future:
        return pop_completed(futures, timeout=timeout)

    def stop_pools(self, task_type: int | Iterable[int], mode: StopMode | str = StopMode.DRAIN) -> list[str]:
        types = list(validate.task_types(task_type))
        return list(self._op("stop_pools", {"task_type": types, "mode": validate.stop_mode(mode).value})["pools"])

    def pools(self, active_only: bool = False) -> list[PoolInfo]:
        out = []
        for row in self._op("pools", {"active_only": validate.boolean(active_only, "active_only")})["pools"]:
            row["stop_requested"] = StopMode(row["stop_requested"]) if row["stop_requested"] else None
            for key in ("started_at", "heartbeat_at", "stopped_at"):
                row[key] = datetime.fromisoformat(row[key]) if row[key] else None
            out.append(PoolInfo(**row))
        return out

    def experiment_status(self, exp_id: str) -> str | None:
        status = self._op("experiment_status", {"exp_id": validate.exp_id(exp_id)})["status"]
        return None if status is None else str(status)

    def set_experiment_status(self, exp_id: str, status: str) -> None:
        self._op("set_experiment_status", {"exp_id": validate.exp_id(exp_id),
                                           "status": validate.label(status, "status")})

    def record_event(self, exp_id: str, kind: str, data: dict[str, Any] | None = None) -> ExperimentEvent:
        validate.json_object(data, "event data")
        return _event(self._op("record_event", {"exp_id": validate.exp_id(exp_id),
                                                "kind": validate.label(kind, "event kind"), "data": data},
                               idempotent=False))

    def events(self, exp_id: str, kind: str | None = None) -> list[ExperimentEvent]:
        rows = self._op("events", {"exp_id": validate.exp_id(exp_id),
                                   "kind": validate.optional_text(kind, "event kind", 100)})["events"]
        return [_event(r) for r in rows]

    def rescue_expired(self) -> dict[int, TaskStatus]:
        return {int(k): TaskStatus(v) for k, v in self._op("rescue_expired", {})["rescued"].items()}

    def rescue_expired_if_due(self) -> None:
        pass  # the server side's waiters do this


class RemoteCompletionWatch:
    """Long-polls the remote side for finished tasks among the pending ones."""

    def __init__(self, queue: RemoteTaskQueue, exp_ids: set[str]) -> None:
        self.queue = queue
        self.exp_ids = exp_ids

    def finished(self, pending: dict[int, Future], timeout: float | None) -> list[tuple[Any, ...]]:
        wait = MAX_WAIT_S if timeout is None else min(timeout, MAX_WAIT_S)
        return self.queue.wait_finished(list(pending), self.exp_ids, wait)

    def close(self) -> None:
        pass
