"""ServiceTaskQueue: the task-queue API through the EMEWS service (httpx), optionally over an
SSH tunnel that it opens, re-opens and closes itself.

Every call is safe to retry (submissions carry an idempotency key; reports are idempotent;
a claim whose reply is lost is recovered by its lease), so connection errors and 502/503/504
answers are retried until ``retry_timeout``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import httpx

from eqflow import validate
from eqflow.errors import AuthError, ConfigError, DatabaseUnavailable, EqflowError
from eqflow.models import ClaimedTask
from eqflow.remote import MAX_WAIT_S, RemoteTaskQueue, raise_error

log = logging.getLogger(__name__)

# operation -> (HTTP method, path); GET operations send their arguments as query parameters
ROUTES: dict[str, tuple[str, str]] = {
    "submit": ("POST", "/v1/tasks"),
    "claim": ("POST", "/v1/tasks/claim"),
    "report": ("POST", "/v1/tasks/report"),
    "report_and_claim": ("POST", "/v1/tasks/report-claim"),
    "report_failure": ("POST", "/v1/tasks/fail"),
    "release": ("POST", "/v1/tasks/release"),
    "extend_leases": ("POST", "/v1/tasks/heartbeat"),
    "info": ("POST", "/v1/tasks/query"),
    "set_priorities": ("POST", "/v1/tasks/priorities"),
    "cancel": ("POST", "/v1/tasks/cancel"),
    "wait_finished": ("POST", "/v1/tasks/completions"),
    "stats": ("GET", "/v1/stats"),
    "open_count": ("GET", "/v1/queues/open"),
    # exp_id as a query parameter: any character ("/", "?", "#", "%") arrives as it was sent,
    # where a path segment would be split, cut or decoded twice (the path route still answers)
    "experiment_tasks": ("GET", "/v1/experiments/tasks"),
    "pools": ("GET", "/v1/pools"),
    "stop_pools": ("POST", "/v1/pools/stop"),
    "rescue_expired": ("POST", "/v1/rescue"),
    "experiment_status": ("GET", "/v1/experiments/status"),
    "set_experiment_status": ("POST", "/v1/experiments/status"),
    "record_event": ("POST", "/v1/events"),
    "events": ("GET", "/v1/events"),
}
RETRY_STATUS = {502, 503, 504}


class ServiceTaskQueue(RemoteTaskQueue):
    """url: the service's base URL (with a tunnel, the local end is used instead).
    token: bearer token (default ``$EQFLOW_SERVICE_TOKEN``)."""

    def __init__(self, url: str | None = None, token: str | None = None, *, tunnel: Any = None,
                 retry_timeout: float = 60.0, max_payload_bytes: int = 16 * 1024 * 1024) -> None:
        import os

        super().__init__(validate.count(max_payload_bytes, "max_payload_bytes", 1, 2**30 - 1))
        wait = validate.timeout(retry_timeout, "retry_timeout")  # NaN would retry forever
        self.token = token or os.environ.get("EQFLOW_SERVICE_TOKEN")
        if not self.token:
            raise ConfigError("ServiceTaskQueue needs a token (argument or $EQFLOW_SERVICE_TOKEN)")
        self.tunnel = tunnel
        if tunnel is not None:
            tunnel.start()
            url = f"http://127.0.0.1:{tunnel.local_port}"
        if not url:
            raise ConfigError("ServiceTaskQueue needs the service URL or a tunnel")
        self.url = url.rstrip("/")
        self.retry_timeout = math.inf if wait is None else wait
        self._no_report_claim = False  # the service answered 404 to /v1/tasks/report-claim
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"},
                                 timeout=httpx.Timeout(MAX_WAIT_S + 30, connect=10.0))

    def close(self) -> None:
        self.http.close()
        if self.tunnel is not None:
            self.tunnel.stop()

    def _op(self, op: str, args: dict[str, Any], *, idempotent: bool = True) -> dict[str, Any]:
        method, path = ROUTES[op]
        params = {k: v for k, v in args.items() if v is not None} if method == "GET" else None
        body = args if method == "POST" else None
        deadline = time.monotonic() + self.retry_timeout
        delay = 0.1
        while True:
            try:
                if self.tunnel is not None:
                    self.tunnel.ensure()
                response = self.http.request(method, path, params=params, json=body)
                if response.status_code not in RETRY_STATUS:
                    return self._decode(response)
                problem: str = f"HTTP {response.status_code}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise DatabaseUnavailable(f"service at {self.url} unreachable for {self.retry_timeout:.0f}s "
                                          f"({problem})")
            log.warning("retrying service call", extra={"op": op, "problem": problem})
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def report_and_claim(self, results: Iterable[tuple[ClaimedTask, str]], task_types: int | Iterable[int],
                         n: int = 1, pool: str = "default",
                         lease_s: float | None = None) -> tuple[set[int], list[ClaimedTask]]:
        """LocalTaskQueue.report_and_claim through the service: one request, one commit. A
        service without the route (older) gets a report and a claim."""
        pairs = list(results)
        types = list(validate.task_types(task_types))
        validate.count(n, "n", 0)
        validate.text(pool, "pool", 200)
        if lease_s is not None:
            lease_s = validate.lease(lease_s)
        if not pairs or self._no_report_claim:
            accepted = self.report(pairs) if pairs else set()
            return accepted, (self.claim(types, n=n, pool=pool, timeout=0.0, lease_s=lease_s) if n else [])
        ids, claims = validate.held((t for t, _ in pairs), "report_and_claim")
        body = [{"task_id": tid, "claim_id": c, "result": validate.text(r, "result", self.max_payload_bytes)}
                for tid, c, (_, r) in zip(ids, claims, pairs, strict=True)]
        try:
            out = self._op("report_and_claim", {"results": body, "task_types": types, "n": n, "pool": pool,
                                                "lease_s": lease_s})
        except EqflowError as exc:
            if str(exc) != "HTTP 404":
                raise
            self._no_report_claim = True
            return self.report_and_claim(pairs, types, n, pool, lease_s)
        return set(out["accepted"]), [ClaimedTask(**t) for t in out["tasks"]]

    @staticmethod
    def _decode(response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise EqflowError(f"service answered HTTP {response.status_code} with non-JSON: "
                              f"{response.text[:200]!r}") from None
        if response.status_code == 401:
            raise AuthError(data.get("error", {}).get("message", "unauthorized"))
        if response.status_code >= 400 or "error" in data:
            raise_error(data.get("error", {"type": "EqflowError", "message": f"HTTP {response.status_code}"}))
        return data  # type: ignore[no-any-return]
