"""GCTaskQueue: the task-queue API with every call run as a function through an Executor.

In production the executor is ``globus_compute_sdk.Executor(endpoint_id=...)`` and the
endpoint runs next to the database; ``gc_run_op`` is what it executes (a module-level
function, importable on the endpoint; no connections cross the wire). The database URL is
the endpoint's: None means its ``$EQFLOW_DB_URL`` (or its embedded database).
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor
from typing import Any

from eqflow.remote import MAX_WAIT_S, RemoteTaskQueue, raise_error, run_op

_queues: dict[str | None, Any] = {}
_queues_lock = threading.Lock()


def gc_run_op(db_url: str | None, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """Runs on the endpoint: one operation on a queue kept open between calls."""
    from eqflow.queue import LocalTaskQueue

    with _queues_lock:
        queue = _queues.get(db_url)
        if queue is None:
            queue = _queues[db_url] = LocalTaskQueue(db_url)
    return run_op(queue, op, args)


class GCTaskQueue(RemoteTaskQueue):
    def __init__(self, executor: Executor, db_url: str | None = None, call_timeout: float = MAX_WAIT_S + 60,
                 max_payload_bytes: int = 16 * 1024 * 1024) -> None:
        super().__init__(max_payload_bytes)
        self.executor = executor
        self.db_url = db_url
        self.call_timeout = call_timeout

    def _op(self, op: str, args: dict[str, Any], *, idempotent: bool = True) -> dict[str, Any]:
        out = self.executor.submit(gc_run_op, self.db_url, op, args).result(timeout=self.call_timeout)
        if "error" in out:
            raise_error(out["error"])
        return out
