"""GCTaskQueue: the task-queue API with every call run as a function through an Executor.

In production the executor is ``globus_compute_sdk.Executor(endpoint_id=...)`` and the
endpoint runs next to the database; ``gc_run_op`` is what it executes (a module-level
function, importable on the endpoint; no connections cross the wire). The database URL is
the endpoint's: None means its ``$EQFLOW_DB_URL`` (or its embedded database).

Globus Compute serializes the arguments with dill and base64 (4/3 larger) and limits a task's
input and output to 10 MB, so a payload or result is kept to 7 MiB here by default.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor
from typing import Any

from eqflow.errors import ConfigError
from eqflow.globus import LOGIN_HINT
from eqflow.remote import MAX_WAIT_S, RemoteTaskQueue, raise_error, run_op

GC_MAX_PAYLOAD_BYTES = 7 * 1024 * 1024

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
                 max_payload_bytes: int = GC_MAX_PAYLOAD_BYTES) -> None:
        super().__init__(max_payload_bytes)
        self.executor = executor
        self.db_url = db_url
        self.call_timeout = call_timeout

    def _op(self, op: str, args: dict[str, Any], *, idempotent: bool = True) -> dict[str, Any]:
        try:
            future = self.executor.submit(gc_run_op, self.db_url, op, args)
        except EOFError as exc:  # the SDK's command-line login, without a terminal to ask on
            raise ConfigError(LOGIN_HINT) from exc
        out = future.result(timeout=self.call_timeout)
        if "error" in out:
            raise_error(out["error"])
        return out
