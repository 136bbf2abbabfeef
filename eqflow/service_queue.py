"""ServiceTaskQueue: the task-queue API through the EMEWS service, optionally over an SSH tunnel
that it opens, re-opens and closes itself.

HTTP is urllib3's: a keep-alive connection pool that spends about half the client CPU per
request that httpx does (one request is most of a call for a single task).

Every call is safe to retry (submissions carry an idempotency key; reports are idempotent;
a claim whose reply is lost is recovered by its lease), so connection errors and 502/503/504
answers are retried until ``retry_timeout``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import queue
import socket
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import urllib3
from pydantic_core import PydanticSerializationError, to_json

from eqflow import validate
from eqflow.errors import AuthError, ConfigError, DatabaseUnavailable, EqflowError
from eqflow.models import ClaimedTask
from eqflow.remote import MAX_WAIT_S, RemoteCompletionWatch, RemoteTaskQueue, raise_error

if TYPE_CHECKING:
    from eqflow.futures import CompletionWatch, Future

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
COMPLETIONS_STREAM = "/v1/tasks/completions/stream"
RETRY_STATUS = {502, 503, 504}
# What a request that never reached the service (or whose answer was cut off) raises.
TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)


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
        self._no_stream = False  # the service answered 404 to COMPLETIONS_STREAM
        self._prefix = urlsplit(self.url).path  # a service behind a proxy, under a path
        self._headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        # One pool for the service's host: a connection per concurrent call, kept alive.
        self.http = urllib3.connection_from_url(self.url, maxsize=32, block=False, retries=False,
                                                timeout=urllib3.Timeout(connect=10.0, read=MAX_WAIT_S + 30))

    def close(self) -> None:
        self.http.close()
        if self.tunnel is not None:
            self.tunnel.stop()

    def _op(self, op: str, args: dict[str, Any], *, idempotent: bool = True) -> dict[str, Any]:
        method, path = ROUTES[op]
        params = {k: v for k, v in args.items() if v is not None} if method == "GET" else None
        return self._decode(self._send(method, path, params=params, body=args if method == "POST" else None, op=op))

    def _send(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None,
              stream: bool = False, op: str = "") -> urllib3.BaseHTTPResponse:
        """The service's first answer that is not a 502, 503 or 504: those and connection errors
        are retried until ``retry_timeout``. A ``stream`` answer is read by the caller, who
        releases its connection (the others come read, their connection back in the pool)."""
        deadline = time.monotonic() + self.retry_timeout
        delay = 0.1
        url = self._prefix + path
        if params:
            url += "?" + urlencode({k: _query_value(v) for k, v in params.items()}, doseq=True)
        data = _json_body(body) if body is not None else None
        while True:
            try:
                if self.tunnel is not None:
                    self.tunnel.ensure()
                response = self.http.urlopen(method, url, body=data, headers=self._headers, redirect=False,
                                             preload_content=not stream)
                if response.status not in RETRY_STATUS:
                    return response
                response.drain_conn()
                response.release_conn()
                problem: str = f"HTTP {response.status}"
            except TRANSPORT_ERRORS as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise DatabaseUnavailable(f"service at {self.url} unreachable for {self.retry_timeout:.0f}s "
                                          f"({problem})")
            log.warning("retrying service call", extra={"op": op or path, "problem": problem})
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

    def watch_completions(self, exp_ids: set[str]) -> CompletionWatch:
        """Completions as a stream (the pending ids sent once per stream, not once per poll); a
        service without the stream route (older) is long-polled."""
        return RemoteCompletionWatch(self, exp_ids) if self._no_stream else StreamingCompletionWatch(self, exp_ids)

    @staticmethod
    def _decode(response: urllib3.BaseHTTPResponse) -> dict[str, Any]:
        try:
            data = json.loads(response.data)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except ValueError:
            raise EqflowError(f"service answered HTTP {response.status} with non-JSON: "
                              f"{response.data[:200]!r}") from None
        if response.status == 401:
            raise AuthError(data.get("error", {}).get("message", "unauthorized"))
        if response.status >= 400 or "error" in data:
            raise_error(data.get("error", {"type": "EqflowError", "message": f"HTTP {response.status}"}))
        return data


def _json_body(body: Any) -> bytes:
    """pydantic-core's JSON (fast); NaN stays NaN and a lone surrogate is escaped, as json
    writes them, so that the service refuses such a body with a clear error."""
    try:
        return to_json(body, inf_nan_mode="constants")
    except PydanticSerializationError:
        return json.dumps(body).encode()


def _query_value(value: Any) -> Any:
    """A query parameter as FastAPI reads it (booleans as true/false; lists repeat the name)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return [_query_value(v) for v in value]
    return value


_ENDED = object()  # a stream's reader puts this when the stream ends, however it ends


class StreamingCompletionWatch:
    """as_completed's watch through the service: one completions stream open at a time, read by
    a thread into a queue. The pending ids are sent when a stream opens (and checked in full
    there); the service then sends only what finishes. A stream ends after at most 25 s, on a
    service restart or at close(); the next call opens another with the ids still pending."""

    def __init__(self, service: ServiceTaskQueue, exp_ids: set[str]) -> None:
        self.service = service
        self.exp_ids = sorted(validate.exp_id(e) for e in exp_ids)
        self._lines: queue.Queue[Any] = queue.Queue()
        self._response: urllib3.BaseHTTPResponse | None = None  # the open stream's
        self._streaming: set[int] = set()  # the ids the open stream watches
        self._unsent: set[int] = set()  # those of them it has not sent yet
        self._reader: threading.Thread | None = None
        self._fallback: RemoteCompletionWatch | None = None

    def finished(self, pending: dict[int, Future], timeout: float | None) -> list[tuple[Any, ...]]:
        if self._fallback is not None:
            return self._fallback.finished(pending, timeout)
        if self._response is None or not pending.keys() <= self._streaming:
            self._open(list(pending))
            if self._fallback is not None:
                return self._fallback.finished(pending, timeout)
        try:
            items = [self._lines.get(timeout=MAX_WAIT_S if timeout is None else max(0.0, timeout))]
        except queue.Empty:
            return []
        while True:
            try:
                items.append(self._lines.get_nowait())
            except queue.Empty:
                break
        rows: list[tuple[Any, ...]] = []
        for item in items:
            if item is _ENDED:
                self._shut(ended=True)  # the next call opens a new stream, if anything is still pending
            elif "error" in item:
                self._shut(ended=True)  # the service ends the stream after an error line
                if item["error"].get("type") != "DatabaseUnavailable":  # that one: retried on reopening
                    raise_error(item["error"])
            else:
                rows.extend(tuple(r) for r in item["finished"])
                self._unsent.difference_update(r[0] for r in item["finished"])
        return rows

    def _open(self, ids: list[int]) -> None:
        """Open a stream for ``ids`` (retrying what ServiceTaskQueue retries), and start its reader."""
        self._shut()
        svc = self.service
        checked = validate.task_ids(ids)
        body = {"task_ids": checked, "exp_ids": self.exp_ids, "timeout": MAX_WAIT_S}
        response = svc._send("POST", COMPLETIONS_STREAM, body=body, stream=True)  # a connection of its own
        if response.status != 200:
            response.read()  # kept in response.data
            response.release_conn()
            if response.status == 404 and b"error" not in response.data:  # no such route: an older service
                svc._no_stream = True
                self._fallback = RemoteCompletionWatch(svc, set(self.exp_ids))
                return
            svc._decode(response)  # raises the service's error
            raise EqflowError(f"HTTP {response.status}")
        self._response, self._streaming, self._unsent = response, set(checked), set(checked)
        self._reader = threading.Thread(target=_read_stream, args=(response, self._lines), name="eqflow-completions",
                                        daemon=True)
        self._reader.start()

    def _shut(self, *, ended: bool = False) -> None:
        """Drop the open stream, if any. One that ``ended`` (or that has sent all its ids and
        ends in a moment) leaves its connection to the client's pool. One still open is cut: its
        socket is shut down rather than closed, which wakes the reader blocked on it (that then
        closes the response) and tells the service at once."""
        if self._response is None:
            return
        reader = self._reader
        if reader is not None and (ended or not self._unsent):
            reader.join(timeout=1.0 if ended else 0.1)
        if reader is not None and reader.is_alive():
            connection = self._response.connection
            sock = getattr(connection, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._response, self._reader, self._streaming, self._unsent = None, None, set(), set()
        self._lines = queue.Queue()  # what a cut stream still puts is not read

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.close()
        self._shut()


def _read_stream(response: urllib3.BaseHTTPResponse, lines: queue.Queue[Any]) -> None:
    """Put each line of a completions stream, then _ENDED. A stream read to its end gives its
    connection back to the pool; one cut off (here, or the service went) closes it."""
    ended = False
    try:
        for line in response:
            if line.strip():
                lines.put(json.loads(line))
        ended = True
    except (*TRANSPORT_ERRORS, ValueError, RuntimeError):
        pass
    finally:
        lines.put(_ENDED)
        if ended:
            response.release_conn()
        else:
            response.close()
