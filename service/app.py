"""The EMEWS service: the whole task-queue API over HTTP, for clients that cannot reach the
database. The service holds the database connection pool; requests carry a bearer token,
never database credentials.

    eqflow service start --cfg service.yaml        (or: uvicorn --factory eqflow.service.app:create_app)
"""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
import psycopg
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.responses import Response as PlainResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic_core import to_json
from starlette.background import BackgroundTask

import eqflow
from eqflow import errors, validate
from eqflow.db.resolve import resolve_url
from eqflow.futures import GATHER_S
from eqflow.notify import Inbox, done_ids
from eqflow.queue import LocalTaskQueue
from eqflow.remote import MAX_WAIT_S, error_dict, run_op
from eqflow.service.config import ServiceConfig, load_config

log = logging.getLogger(__name__)
T = TypeVar("T")
HEALTH_TTL_S = 0.5  # a database probe's answer is reused this long (at most ~2 probes a second)

STATUS = {"InvalidInput": 422, "PayloadTooLarge": 413, "UnknownTask": 404, "DatabaseUnavailable": 503,
          "AmbiguousCommit": 503, "ConfigError": 400, "AuthError": 401}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SubmitBody(Strict):
    exp_id: StrictStr
    task_type: StrictInt
    payloads: list[StrictStr]
    priority: StrictInt | list[StrictInt] = 0
    tag: StrictStr | None | list[StrictStr | None] = None
    max_attempts: StrictInt | None = None
    idempotency_key: StrictStr | None = Field(None, description="a retried submit with this key is not repeated")


class ClaimBody(Strict):
    task_types: list[StrictInt]
    n: StrictInt = 1
    pool: StrictStr = "default"
    timeout: float = Field(0.0, ge=0, description="seconds to wait for work (at most 25)")
    lease_s: float | None = Field(None, gt=0)


class Lease(Strict):
    task_id: StrictInt
    claim_id: StrictInt | None


class Result(Lease):
    result: StrictStr


class Failure(Lease):
    error: StrictStr


class ReportBody(Strict):
    results: list[Result]


class ReportClaimBody(Strict):
    results: list[Result]
    task_types: list[StrictInt]
    n: StrictInt = 1
    pool: StrictStr = "default"
    lease_s: float | None = Field(None, gt=0)


class FailBody(Strict):
    failures: list[Failure]
    retry: StrictBool = True


class LeasesBody(Strict):
    tasks: list[Lease]
    lease_s: float | None = Field(None, gt=0)


class IdsBody(Strict):
    task_ids: list[StrictInt]


class PrioritiesBody(IdsBody):
    priority: StrictInt | list[StrictInt]


class CompletionsBody(IdsBody):
    exp_ids: list[StrictStr] = Field(default_factory=list)
    timeout: float = Field(0.0, ge=0, description="seconds to wait for a completion (at most 25)")


class EventBody(Strict):
    exp_id: StrictStr
    kind: StrictStr
    data: dict[str, Any] = Field(default_factory=dict, description="JSON values, at most 64 KiB")


class ExperimentStatusBody(Strict):
    exp_id: StrictStr
    status: StrictStr


class StopBody(Strict):
    task_type: StrictInt | list[StrictInt]
    mode: StrictStr = "drain"


# The hot routes' operations, from their checked bodies: (operation of eqflow.remote.OPS,
# arguments, batch size). FastAPI's routes below declare them (the OpenAPI schema, the docs);
# the Guard serves them itself (see Guard._hot).
Op = tuple[str, dict[str, Any], int]


def _submit_op(body: SubmitBody) -> Op:
    return "submit", body.model_dump(), len(body.payloads)


def _report_op(body: ReportBody) -> Op:
    return "report", body.model_dump(), len(body.results)


def _report_claim_op(body: ReportClaimBody) -> Op:
    return "report_and_claim", body.model_dump(), max(len(body.results), body.n)


def _fail_op(body: FailBody) -> Op:
    return "report_failure", body.model_dump(), len(body.failures)


def _release_op(body: LeasesBody) -> Op:
    return "release", {"tasks": body.model_dump()["tasks"]}, len(body.tasks)


def _heartbeat_op(body: LeasesBody) -> Op:
    return "extend_leases", body.model_dump(), len(body.tasks)


def _query_op(body: IdsBody) -> Op:
    return "info", body.model_dump(), len(body.task_ids)


def _priorities_op(body: PrioritiesBody) -> Op:
    return "set_priorities", body.model_dump(), len(body.task_ids)


def _cancel_op(body: IdsBody) -> Op:
    return "cancel", body.model_dump(), len(body.task_ids)


HOT_ROUTES: dict[str, tuple[type[Strict], Callable[[Any], Op]]] = {
    "/v1/tasks": (SubmitBody, _submit_op),
    "/v1/tasks/report": (ReportBody, _report_op),
    "/v1/tasks/report-claim": (ReportClaimBody, _report_claim_op),
    "/v1/tasks/fail": (FailBody, _fail_op),
    "/v1/tasks/release": (LeasesBody, _release_op),
    "/v1/tasks/heartbeat": (LeasesBody, _heartbeat_op),
    "/v1/tasks/query": (IdsBody, _query_op),
    "/v1/tasks/priorities": (PrioritiesBody, _priorities_op),
    "/v1/tasks/cancel": (IdsBody, _cancel_op),
}


def _error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **extra}}, status_code=status)


def _token_ok(tokens: list[bytes], authorization: bytes | str | None) -> bool:
    """Whether an Authorization header carries one of the tokens (every token is compared, always:
    timing tells nothing)."""
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, offered = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        offered = ""
    ok = False
    for token in tokens:
        ok |= hmac.compare_digest(offered.strip().encode("latin-1", "replace"), token)
    return ok and bool(offered)


def _closing(response: JSONResponse) -> JSONResponse:
    """The connection is closed after this answer: a body the client may still be sending is not read."""
    response.headers["Connection"] = "close"
    return response


def _unauthorized_response() -> JSONResponse:
    response = _error(401, "AuthError", "missing or invalid bearer token")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Guard:
    """In front of the app, before any body byte is read: a /v1 request without a valid bearer
    token is answered 401 and its connection closed; a body declared over the limit is refused
    with 413. Then the body is read with a per-read timeout (a client that goes silent mid-body
    is answered 408 and dropped) and a size limit (for bodies without a declared length)."""

    def __init__(self, app: Any, tokens: list[bytes], limit: int, body_timeout_s: float,
                 ctx: _Context | None = None) -> None:
        self.app = app
        self.tokens = tokens
        self.limit = limit
        self.body_timeout_s = body_timeout_s
        self.ctx = ctx  # given: the hot routes are served here (see _hot)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        guarded = path == "/v1" or path.startswith("/v1/") or path == "/metrics"
        if guarded and not _token_ok(self.tokens, headers.get(b"authorization")):
            await _closing(_unauthorized_response())(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_big()(scope, receive, send)
            return
        chunks: list[bytes] = []
        seen, more = 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                stalled = _error(408, "RequestTimeout", f"no body data for {self.body_timeout_s:g}s")
                await _closing(stalled)(scope, receive, send)
                return
            if message["type"] != "http.request":
                await self.app(scope, _replay([], receive, message), send)  # a disconnect: let the app see it
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await self._too_big()(scope, receive, send)
                return
            if chunk:
                chunks.append(chunk)
            more = message.get("more_body", False)
        hot = HOT_ROUTES.get(path) if self.ctx is not None and scope.get("method") == "POST" else None
        if hot is not None and _json_content(headers.get(b"content-type")):
            await self._hot(*hot, b"".join(chunks), scope, receive, send)
            return
        await self.app(scope, _replay(chunks, receive), send)

    def _too_big(self) -> JSONResponse:
        return _closing(_error(413, "PayloadTooLarge", f"request body over the limit of {self.limit} bytes"))

    async def _hot(self, model: type[Strict], op: Callable[[Any], Op], body: bytes, scope: dict[str, Any],
                   receive: Receive, send: Send) -> None:
        """A hot route (HOT_ROUTES) answered here, as its FastAPI route would answer it: the
        body checked by its model (pydantic-core parses the JSON itself), the operation run in
        one trip to a worker thread. The token was checked above; FastAPI's routing, dependency
        solving and middleware stack would cost about as much as the operation."""
        assert self.ctx is not None
        response: PlainResponse
        try:
            checked = model.model_validate_json(body)
        except ValidationError as exc:
            response = _invalid_response([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
        else:
            try:
                response = await self.ctx.answer(*op(checked))
            except _Raised as exc:
                response = JSONResponse({"error": exc.error}, status_code=exc.status)
            except errors.EqflowError as exc:
                response = _eqflow_error_response(exc)
        await response(scope, receive, send)


def _json_content(content_type: bytes | None) -> bool:
    """A body FastAPI would read as JSON (none declared, or application/json)."""
    return content_type is None or content_type.split(b";")[0].strip().lower() == b"application/json"


def _replay(chunks: list[bytes], receive: Receive, first: MutableMapping[str, Any] | None = None) -> Receive:
    """A receive() that hands the buffered body on in one message, then defers to the server."""
    pending: MutableMapping[str, Any] | None = first or {
        "type": "http.request", "body": chunks[0] if len(chunks) == 1 else b"".join(chunks), "more_body": False}

    async def replayed() -> MutableMapping[str, Any]:
        nonlocal pending
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return replayed


@dataclass
class _Context:
    cfg: ServiceConfig
    tokens: list[bytes]
    queue: LocalTaskQueue | None
    owns_queue: bool
    long_polls: int = 0  # requests waiting for work or completions now (touched on the event loop only)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _poll_limiter: anyio.CapacityLimiter | None = None
    _probe: asyncio.Task[bool] | None = None
    _probed_at: float = -1e9

    def get_queue(self) -> LocalTaskQueue:
        with self._lock:
            if self.queue is None:
                try:
                    self.queue = LocalTaskQueue(self.cfg.db_url, pool_size=self.cfg.pool_size,
                                                max_payload_bytes=self.cfg.max_payload_bytes,
                                                reconnect_timeout=self.cfg.db_wait_s)
                except psycopg.Error:  # opening (migrations) before the pool exists: no host or user in replies
                    raise errors.DatabaseUnavailable("the database is unavailable") from None
            return self.queue

    def warm_up(self) -> None:
        """Open the queue at startup (in a thread) so /health tells the truth at once."""
        try:
            self.get_queue()
        except Exception as exc:  # the first request tries again
            log.warning("database not available at startup", extra={"error": type(exc).__name__})

    def authorized(self, request: Request) -> bool:
        return _token_ok(self.tokens, request.headers.get("authorization"))

    async def in_thread(self, fn: Callable[[], T], *, long_poll: bool = False, abandon: bool = False) -> T:
        """Run blocking database work in a worker thread. A long-poll's checks share a small
        limiter of their own, so a herd of woken waiters never takes the threads short requests need."""
        if long_poll and self._poll_limiter is None:
            self._poll_limiter = anyio.CapacityLimiter(self.cfg.long_poll_threads)
        return await anyio.to_thread.run_sync(fn, limiter=self._poll_limiter if long_poll else None,
                                              abandon_on_cancel=abandon)

    def op(self, name: str, args: dict[str, Any], batch: int = 0) -> dict[str, Any]:
        """One operation of eqflow.remote.OPS, in a worker thread; errors raised for the handlers."""
        if batch > self.cfg.max_batch:
            raise errors.PayloadTooLarge(f"a batch of {batch} is over the service's limit of {self.cfg.max_batch}")
        out = run_op(self.get_queue(), name, args)
        if "error" in out:
            error = _public(out["error"])
            raise _Raised(STATUS.get(error["type"], 400), error)
        return out

    async def answer(self, name: str, args: dict[str, Any], batch: int = 0) -> PlainResponse:
        """op in one trip to a worker thread, its answer written as JSON by pydantic-core (a sync
        route makes two trips, the second to check a dict against dict[str, Any])."""
        out = await self.in_thread(partial(self.op, name, args, batch))
        return PlainResponse(to_json(out), media_type="application/json")

    async def database_state(self) -> str:
        """"ok" or "unavailable", within health_timeout_s: one short probe connection at a time,
        its answer reused for HEALTH_TTL_S; a probe that takes longer goes on in the background."""
        if self._probe is None or (self._probe.done() and time.monotonic() - self._probed_at > HEALTH_TTL_S):
            self._probe = asyncio.get_running_loop().create_task(self.in_thread(self._probe_database, abandon=True))
        try:
            ok = await asyncio.wait_for(asyncio.shield(self._probe), self.cfg.health_timeout_s)
        except TimeoutError:
            return "unavailable"
        return "ok" if ok else "unavailable"

    def _probe_database(self) -> bool:
        try:
            url = self.queue.url if self.queue is not None else resolve_url(self.cfg.db_url, migrate=False,
                                                                            create=False)
            with psycopg.connect(url, connect_timeout=2, autocommit=True,
                                 application_name="eqflow-service-health") as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:
            return False
        finally:
            self._probed_at = time.monotonic()


def _ctx(request: Request) -> _Context:
    return request.app.state.ctx  # type: ignore[no-any-return]


_bearer = HTTPBearer(auto_error=False)


async def authorize(request: Request,
                    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Checked again here (Guard already refused bad tokens before the body was read)."""
    if not _token_ok(_ctx(request).tokens, f"Bearer {creds.credentials}" if creds else None):
        raise _Unauthorized()


def _op(request: Request, name: str, args: dict[str, Any], batch: int = 0) -> dict[str, Any]:
    return _ctx(request).op(name, args, batch)


async def _answer(request: Request, name: str, args: dict[str, Any], batch: int = 0) -> PlainResponse:
    return await _ctx(request).answer(name, args, batch)


router = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])
pages = APIRouter()

_BARE_PAGE = ("<html><head><title>eqflow</title></head><body><h1>eqflow service</h1><p>running. "
              "Details for callers with <code>Authorization: Bearer &lt;token&gt;</code>.</p></body></html>")


@pages.get("/metrics", tags=["service"], dependencies=[Depends(authorize)])
async def metrics(request: Request) -> PlainResponse:
    """Prometheus metrics, with ``Authorization: Bearer <token>``: the database's figures read in a few
    O(1) queries (eqflow.metrics; eqflow_db_up 0 when the database does not answer)."""
    from eqflow.metrics import CONTENT_TYPE, service_metrics

    ctx = _ctx(request)

    def url() -> str:
        return ctx.queue.url if ctx.queue is not None else resolve_url(ctx.cfg.db_url, migrate=False, create=False)

    body = await ctx.in_thread(lambda: service_metrics(request.app.state, url), abandon=True)
    return PlainResponse(body, media_type=CONTENT_TYPE)


@pages.get("/health", tags=["service"])
async def health(request: Request) -> JSONResponse:
    """Liveness, and whether the database answers (503 when it does not), within a second.
    With a valid bearer token: also the version and the number of waiting long-polls."""
    ctx = _ctx(request)
    state = await ctx.database_state()
    body: dict[str, Any] = {"status": "ok", "database": state}
    if ctx.authorized(request):
        body |= {"version": eqflow.__version__, "long_polls": ctx.long_polls}
    return JSONResponse(body, status_code=200 if state == "ok" else 503)


@pages.get("/", response_class=HTMLResponse, tags=["service"])
async def status_page(request: Request) -> HTMLResponse:
    """A small status page. Anyone: that the service runs. With ``Authorization: Bearer <token>``
    (a header, never a query parameter): task counts per type and status, active pools."""
    ctx = _ctx(request)
    if not ctx.authorized(request):
        return HTMLResponse(_BARE_PAGE)
    head = f"<html><head><title>eqflow</title></head><body><h1>eqflow service {html.escape(eqflow.__version__)}</h1>"
    unavailable = HTMLResponse(f"{head}<p>database: unavailable</p></body></html>")
    if await ctx.database_state() != "ok":
        return unavailable

    def fetch() -> tuple[dict[int, dict[str, int]], list[Any]]:
        queue = ctx.get_queue()
        return queue.stats(), queue.pools(active_only=True)

    try:
        stats, pools = await asyncio.wait_for(ctx.in_thread(fetch, abandon=True), 5.0)
    except (TimeoutError, errors.EqflowError):
        return unavailable
    rows = "".join(f"<tr><td>{t}</td><td>{html.escape(s)}</td><td>{c}</td></tr>"
                   for t, by in stats.items() for s, c in by.items())
    pool_rows = "".join(f"<li>{html.escape(p.name)}-{p.pool_id} types {p.task_types}, {p.n_workers} workers</li>"
                        for p in pools)
    return HTMLResponse(
        f"{head}<p>database: ok; {ctx.long_polls} long-polls waiting</p>"
        f"<h2>Tasks</h2><table border=1><tr><th>type</th><th>status</th><th>count</th></tr>{rows}</table>"
        f"<h2>Active pools</h2><ul>{pool_rows or '<li>none</li>'}</ul></body></html>")


class _Waiter:
    """An inbox of the shared LISTEN connection that wakes an asyncio task: the listener thread
    sets the event through call_soon_threadsafe, so a waiting request holds no thread."""

    def __init__(self, inbox: Inbox, close: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()
        self.inbox = inbox
        self.event = asyncio.Event()
        self._close = close

        def wake() -> None:  # from the listener thread
            loop.call_soon_threadsafe(self.event.set)

        inbox.on_signal = wake

    def take(self) -> tuple[list[str], bool, bool]:
        """What arrived since the last take, without blocking: (payloads, resync, signaled)."""
        self.event.clear()
        return self.inbox.wait(0)

    async def sleep(self, seconds: float) -> bool:
        """Until a notification (True) or ``seconds`` pass (False)."""
        try:
            await asyncio.wait_for(self.event.wait(), max(0.0, seconds))
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.inbox.on_signal = None
        self._close()


def _wait_s(timeout: float) -> float:
    return min(float(timeout), MAX_WAIT_S)


@router.post("/tasks", tags=["tasks"])
async def submit(request: Request, body: SubmitBody) -> PlainResponse:
    """Queue tasks (all or nothing). Repeating an idempotency key returns the first ids."""
    return await _answer(request, *_submit_op(body))


@router.post("/tasks/claim", tags=["pools"])
async def claim(request: Request, body: ClaimBody) -> dict[str, Any]:
    """Claim up to n queued tasks (highest priority first), waiting up to timeout (at most 25 s)
    for work. A waiting claim holds no thread: it is woken by the queue's notifications."""
    ctx = _ctx(request)
    wait = _wait_s(body.timeout)
    args = {**body.model_dump(), "timeout": 0.0}

    def claim_now() -> dict[str, Any]:
        return ctx.op("claim", args, body.n)

    if wait <= 0:
        return await ctx.in_thread(claim_now)
    keys = {str(t) for t in body.task_types}

    def subscribe() -> tuple[Inbox, Callable[[], None]]:
        inbox = ctx.get_queue()._listener.subscribe("eqflow_queued", keys)
        return inbox, inbox.close

    return await _long_poll(request, ctx, time.monotonic() + wait, subscribe,
                            lambda full, payloads: claim_now if full or payloads else None, "tasks")


async def _long_poll(request: Request, ctx: _Context, deadline: float,
                     subscribe: Callable[[], tuple[Inbox, Callable[[], None]]],
                     plan: Callable[[bool, list[str]], Callable[[], dict[str, Any]] | None],
                     key: str) -> dict[str, Any]:
    """Subscribe and check everything, in one trip to a worker thread (nothing sent before the
    check is missed; found at once, the request is answered). Then: check what ``plan`` says,
    given whether a full check is due and the notifications that came, and sleep on the event
    loop until the next notification or the safety-net interval, until the check finds
    something under ``key`` or the deadline passes."""

    def subscribe_and_check() -> tuple[Inbox, Callable[[], None], dict[str, Any]]:
        inbox, close = subscribe()  # may wait for the listener to connect
        try:
            work = plan(True, [])
            assert work is not None  # a full check always has work
            return inbox, close, work()
        except BaseException:
            close()
            raise

    ctx.long_polls += 1
    try:
        inbox, close, out = await ctx.in_thread(subscribe_and_check, long_poll=True)
        waiter = _Waiter(inbox, close)
        try:
            if out[key]:
                return out
            full = False  # checked just now; what was sent since is in the inbox
            while True:
                payloads, resync, _ = waiter.take()
                work = plan(full or resync, payloads)
                if work is not None:
                    if await request.is_disconnected():
                        return {key: []}
                    out = await ctx.in_thread(work, long_poll=True)
                    if out[key]:
                        return out
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return {key: []}
                full = not await waiter.sleep(min(remaining, ctx.cfg.long_poll_check_s))
                if full:  # the safety net: check anyway, and rescue expired leases if due
                    await ctx.in_thread(lambda: ctx.get_queue().rescue_expired_if_due(), long_poll=True)
        finally:
            waiter.close()
    finally:
        ctx.long_polls -= 1


@router.post("/tasks/report", tags=["pools"])
async def report(request: Request, body: ReportBody) -> PlainResponse:
    """Complete claimed tasks; only the current lease holder's report is accepted."""
    return await _answer(request, *_report_op(body))


@router.post("/tasks/report-claim", tags=["pools"])
async def report_and_claim(request: Request, body: ReportClaimBody) -> PlainResponse:
    """Complete claimed tasks and claim up to n more, in one statement and one commit (a
    worker at steady state); never waits for work: use /tasks/claim when it comes back empty."""
    return await _answer(request, *_report_claim_op(body))


@router.post("/tasks/fail", tags=["pools"])
async def fail(request: Request, body: FailBody) -> PlainResponse:
    """Report failed runs; retried until max_attempts when retry is true."""
    return await _answer(request, *_fail_op(body))


@router.post("/tasks/release", tags=["pools"])
async def release(request: Request, body: LeasesBody) -> PlainResponse:
    """Give claimed tasks back to the queue unrun."""
    return await _answer(request, *_release_op(body))


@router.post("/tasks/heartbeat", tags=["pools"])
async def heartbeat(request: Request, body: LeasesBody) -> PlainResponse:
    """Extend the leases of held tasks."""
    return await _answer(request, *_heartbeat_op(body))


@router.post("/tasks/query", tags=["tasks"])
async def query(request: Request, body: IdsBody) -> PlainResponse:
    """Status, priority, pool and result of many tasks."""
    return await _answer(request, *_query_op(body))


@router.post("/tasks/priorities", tags=["tasks"])
async def priorities(request: Request, body: PrioritiesBody) -> PlainResponse:
    """Reprioritize queued tasks: one value, or one per task."""
    return await _answer(request, *_priorities_op(body))


@router.post("/tasks/cancel", tags=["tasks"])
async def cancel(request: Request, body: IdsBody) -> PlainResponse:
    """Cancel queued tasks."""
    return await _answer(request, *_cancel_op(body))


@router.post("/tasks/completions", tags=["tasks"])
async def completions(request: Request, body: CompletionsBody) -> dict[str, Any]:
    """Long-poll: finished tasks among task_ids, waiting up to timeout (at most 25 s) for at least
    one. A waiting poll holds no thread: it is woken by the completions of its exp_ids' tasks."""
    ctx = _ctx(request)
    wait = _wait_s(body.timeout)
    args = {**body.model_dump(), "timeout": 0.0}

    def finished_among(ids: list[int]) -> Callable[[], dict[str, Any]]:
        return lambda: ctx.op("wait_finished", {**args, "task_ids": ids}, len(ids))

    if wait <= 0 or not body.task_ids:
        return await ctx.in_thread(finished_among(body.task_ids))
    wanted = set(body.task_ids)

    def subscribe() -> tuple[Inbox, Callable[[], None]]:
        watch = ctx.get_queue().watch_completions(set(body.exp_ids))  # the same keys as a local waiter's
        return watch.inbox, watch.close

    def plan(full: bool, payloads: list[str]) -> Callable[[], dict[str, Any]] | None:
        if full:
            return finished_among(body.task_ids)
        named = sorted(done_ids(payloads) & wanted)  # only the ids the notifications name are looked up
        return finished_among(named) if named else None

    return await _long_poll(request, ctx, time.monotonic() + wait, subscribe, plan, "finished")


@router.post("/tasks/completions/stream", tags=["tasks"], response_class=StreamingResponse,
             responses={200: {"content": {"application/x-ndjson": {}},
                              "description": 'one JSON object per line: {"finished": [[task_id, status, '
                                             'result, error, pool], ...]}, or {"error": {...}} before it ends'}})
async def completions_stream(request: Request, body: CompletionsBody) -> StreamingResponse:
    """Finished tasks among task_ids as they finish, one line per look-up that found some, until
    every one was sent, the timeout (at most 25 s) passes or the client goes. The ids travel once
    per stream and are checked in full once: then only those the completion notifications name
    are looked up (the long-poll above takes them all again on every call)."""
    ctx = _ctx(request)
    wanted = set(validate.task_ids(body.task_ids))
    deadline = time.monotonic() + _wait_s(body.timeout)

    def subscribe_and_check() -> tuple[Inbox, Callable[[], None], list[list[Any]]]:
        queue = ctx.get_queue()
        watch = queue.watch_completions(set(body.exp_ids))  # before the check: nothing sent after it is missed
        try:
            return watch.inbox, watch.close, _finished_rows(ctx, sorted(wanted))
        except BaseException:
            watch.close()
            raise

    ctx.long_polls += 1
    try:
        inbox, unsubscribe, first = await ctx.in_thread(subscribe_and_check, long_poll=True)
    except BaseException:
        ctx.long_polls -= 1
        raise
    stream = _CompletionStream(ctx, wanted, deadline, _Waiter(inbox, unsubscribe))
    return StreamingResponse(stream.lines(first), media_type="application/x-ndjson",
                             background=BackgroundTask(stream.aclose))  # closes one that never ran


class _CompletionStream:
    """What one completions stream still waits for, until it ends."""

    def __init__(self, ctx: _Context, wanted: set[int], deadline: float, waiter: _Waiter) -> None:
        self.ctx = ctx
        self.wanted = wanted
        self.deadline = deadline
        self.waiter = waiter
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.waiter.close()
            self.ctx.long_polls -= 1

    async def aclose(self) -> None:  # a coroutine, so that BackgroundTask runs it on the event loop
        self.close()

    async def lines(self, rows: list[list[Any]]) -> AsyncIterator[bytes]:
        try:
            while True:
                if rows:
                    self.wanted.difference_update(r[0] for r in rows)
                    yield to_json({"finished": rows}) + b"\n"
                    if not self.wanted:
                        return  # at once: the client's connection is free for its next request
                    await asyncio.sleep(GATHER_S)  # completions stream in: take them in batches
                try:
                    rows = await self._next_rows()
                except errors.EqflowError as exc:  # the status line is long sent: the error ends the stream
                    yield to_json({"error": _public(error_dict(exc))}) + b"\n"
                    return
                if not rows:
                    return
        finally:
            self.close()

    async def _next_rows(self) -> list[list[Any]]:
        """The next finished tasks among those wanted; [] when none are left or the time is up."""
        full = False
        while self.wanted:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                return []
            payloads, resync, _ = self.waiter.take()
            check = sorted(self.wanted) if full or resync else sorted(done_ids(payloads) & self.wanted)
            if check:
                rows = await self.ctx.in_thread(partial(_finished_rows, self.ctx, check), long_poll=True)
                if rows:
                    return rows
            full = not await self.waiter.sleep(min(remaining, self.ctx.cfg.long_poll_check_s))
            if full:  # the safety net, as the long-poll's
                await self.ctx.in_thread(lambda: self.ctx.get_queue().rescue_expired_if_due(), long_poll=True)
        return []


def _finished_rows(ctx: _Context, task_ids: list[int]) -> list[list[Any]]:
    """(task_id, status, result, error, pool) of the finished tasks among task_ids, at most
    max_batch ids per look-up."""
    queue = ctx.get_queue()
    step = ctx.cfg.max_batch
    return [list(r) for start in range(0, len(task_ids), step)
            for r in queue._finished_among(task_ids[start:start + step])]


@router.get("/stats", tags=["queues"])
def stats(request: Request, exp_id: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
    """Task counts per type and status."""
    return _op(request, "stats", {"exp_id": exp_id})


@router.get("/queues/open", tags=["queues"])
def open_count(request: Request,
               task_type: Annotated[int | None, Query(ge=-(2**31), le=2**31 - 1)] = None) -> dict[str, Any]:
    """Tasks queued or running."""
    return _op(request, "open_count", {"task_type": task_type})


@router.get("/experiments/{exp_id}/tasks", tags=["tasks"])
def experiment_tasks(request: Request, exp_id: str) -> dict[str, Any]:
    """Every task of an experiment (re-attach after a restart)."""
    return _op(request, "experiment_tasks", {"exp_id": exp_id})


@router.get("/experiments/tasks", tags=["tasks"])
def experiment_tasks_by_query(request: Request, exp_id: Annotated[str, Query(max_length=200)]) -> dict[str, Any]:
    """Every task of an experiment; exp_id as a query parameter, so any exp_id ("/", "?", "#",
    "%") arrives intact. ServiceTaskQueue uses this route."""
    return _op(request, "experiment_tasks", {"exp_id": exp_id})


@router.get("/pools", tags=["pools"])
def pools(request: Request, active_only: bool = False) -> dict[str, Any]:
    """Registered worker pools."""
    return _op(request, "pools", {"active_only": active_only})


@router.post("/pools/stop", tags=["pools"])
def stop_pools(request: Request, body: StopBody) -> dict[str, Any]:
    """Tell the running pools of a type to stop: drain or now."""
    if body.mode not in ("drain", "now"):
        raise errors.InvalidInput(f"mode must be 'drain' or 'now', got {body.mode!r}")
    return _op(request, "stop_pools", body.model_dump())


@router.get("/experiments/status", tags=["experiments"])
def experiment_status(request: Request, exp_id: Annotated[str, Query(max_length=200)]) -> dict[str, Any]:
    """An experiment's status (null if it was never created)."""
    return _op(request, "experiment_status", {"exp_id": exp_id})


@router.post("/experiments/status", tags=["experiments"])
def set_experiment_status(request: Request, body: ExperimentStatusBody) -> dict[str, Any]:
    """Set an experiment's status (e.g. finished)."""
    return _op(request, "set_experiment_status", body.model_dump())


@router.post("/events", tags=["experiments"])
def record_event(request: Request, body: EventBody) -> dict[str, Any]:
    """Append to an experiment's event log."""
    return _op(request, "record_event", body.model_dump())


@router.get("/events", tags=["experiments"])
def events(request: Request, exp_id: Annotated[str, Query(max_length=200)],
           kind: Annotated[str | None, Query(max_length=100)] = None) -> dict[str, Any]:
    """An experiment's event log, oldest first."""
    return _op(request, "events", {"exp_id": exp_id, "kind": kind})


@router.post("/rescue", tags=["pools"])
def rescue(request: Request) -> dict[str, Any]:
    """Requeue tasks whose lease expired."""
    return _op(request, "rescue_expired", {})


async def _unauthorized(_: Request, __: Exception) -> JSONResponse:
    return _unauthorized_response()


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _invalid_response(exc.errors())


def _invalid_response(problems: Sequence[Any]) -> JSONResponse:
    text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in list(problems)[:10])
    return _error(422, "InvalidInput", text)


def _public(error: dict[str, Any]) -> dict[str, Any]:
    """An error as a client may see it: where the database lives (host, port, user) stays here."""
    if error.get("type") == "DatabaseUnavailable":
        log.warning("database unavailable", extra={"error": error.get("message")})
        return {**error, "message": "the database is unavailable; retry later"}
    return error


async def _eqflow_error(_: Request, exc: Exception) -> JSONResponse:
    return _eqflow_error_response(exc)


def _eqflow_error_response(exc: Exception) -> JSONResponse:
    body = _public(error_dict(exc))
    return JSONResponse({"error": body}, status_code=STATUS.get(body["type"], 400))


async def _raised(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, _Raised)
    return JSONResponse({"error": exc.error}, status_code=exc.status)


# /docs and /redoc without a CDN (an HPC login node has no internet): Swagger UI and ReDoc come from
# the fastapi-offline package and are served here. Public like /openapi.json (the schema, no data);
# their Content-Security-Policy lets them load nothing from elsewhere (not ReDoc's logo, not Swagger
# UI's validator badge) and sends no Referer.
DOCS_ASSETS = "/docs-assets"
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
            "frame-ancestors 'none'; base-uri 'self'; form-action 'self'")


def _offline_docs(app: FastAPI) -> None:
    app.mount(DOCS_ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")

    def page(response: HTMLResponse) -> HTMLResponse:
        response.headers["Content-Security-Policy"] = DOCS_CSP
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return page(get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png", swagger_ui_parameters={"validatorUrl": None}))

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return page(get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png", with_google_fonts=False))


def build_app(config: ServiceConfig | None = None, queue: LocalTaskQueue | None = None) -> FastAPI:
    """The FastAPI app (without the Guard in front; see create_app)."""
    cfg = config or load_config(os.environ.get("EQFLOW_SERVICE_CONFIG"))
    ctx = _Context(cfg, [t.encode() for t in cfg.accepted_tokens()], queue, owns_queue=queue is None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if ctx.queue is None:
            threading.Thread(target=ctx.warm_up, name="eqflow-service-warm-up", daemon=True).start()
        yield
        if ctx.owns_queue and ctx.queue is not None:
            ctx.queue.close()

    app = FastAPI(title="eqflow EMEWS service", version=eqflow.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # _offline_docs serves them
                  description="The eqflow task-queue API over HTTP. Every /v1 route needs "
                              "`Authorization: Bearer <token>`, checked before the request body is read. "
                              "`/health` answers at once: 200 with `database: ok`, or 503 with "
                              "`database: unavailable`.")
    app.state.ctx = ctx
    app.include_router(pages)
    app.include_router(router)
    from eqflow.dashboard.routes import make_router as dashboard_router

    app.include_router(dashboard_router(lambda: ctx.get_queue().db, ctx.tokens))  # /dashboard: token or cookie
    _offline_docs(app)
    app.add_exception_handler(_Unauthorized, _unauthorized)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(errors.EqflowError, _eqflow_error)
    app.add_exception_handler(_Raised, _raised)
    return app


def create_app(config: ServiceConfig | None = None, queue: LocalTaskQueue | None = None) -> Any:
    """The ASGI app to serve: build_app() behind the Guard (token before body, body limit and timeout)."""
    app = build_app(config, queue)
    ctx: _Context = app.state.ctx
    return Guard(app, ctx.tokens, ctx.cfg.max_body_bytes, ctx.cfg.body_timeout_s, ctx)


class _Unauthorized(Exception):
    pass


class _Raised(Exception):
    def __init__(self, status: int, error: dict[str, Any]) -> None:
        self.status = status
        self.error = error
