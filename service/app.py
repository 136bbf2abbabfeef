"""The EMEWS service: the whole task-queue API over HTTP, for clients that cannot reach the
database. The service holds the database connection pool; requests carry a bearer token,
never database credentials.

    eqflow service start --cfg service.yaml        (or: uvicorn --factory eqflow.service.app:create_app)
"""

from __future__ import annotations

import hmac
import html
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

import eqflow
from eqflow import errors
from eqflow.queue import LocalTaskQueue
from eqflow.remote import error_dict, run_op
from eqflow.service.config import ServiceConfig, load_config

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


def _error(status: int, kind: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **extra}}, status_code=status)


class BodyLimit:
    """Refuses request bodies over the limit (declared or streamed) with 413, before parsing."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
                       send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = _error(413, "PayloadTooLarge", f"request body over the limit of {self.limit} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await too_big(scope, receive, send)
            return
        if declared is not None:
            await self.app(scope, receive, send)  # the server holds a body to its declared length
            return
        # No length declared (chunked): buffer up to the limit, then hand the body on.
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # a disconnect: let the app see it
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await too_big(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


@dataclass
class _Context:
    cfg: ServiceConfig
    tokens: list[bytes]
    queue: LocalTaskQueue | None
    owns_queue: bool

    def get_queue(self) -> LocalTaskQueue:
        if self.queue is None:
            self.queue = LocalTaskQueue(self.cfg.db_url, pool_size=self.cfg.pool_size,
                                        max_payload_bytes=self.cfg.max_payload_bytes)
        return self.queue


def _ctx(request: Request) -> _Context:
    return request.app.state.ctx  # type: ignore[no-any-return]


_bearer = HTTPBearer(auto_error=False)


def authorize(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    offered = (creds.credentials if creds else "").encode()
    ok = False
    for token in _ctx(request).tokens:  # every token, always: timing tells nothing
        ok |= hmac.compare_digest(offered, token)
    if not ok:
        raise _Unauthorized()


def _op(request: Request, name: str, args: dict[str, Any], batch: int = 0) -> dict[str, Any]:
    ctx = _ctx(request)
    if batch > ctx.cfg.max_batch:
        raise errors.PayloadTooLarge(f"a batch of {batch} is over the service's limit of {ctx.cfg.max_batch}")
    out = run_op(ctx.get_queue(), name, args)
    if "error" in out:
        raise _Raised(STATUS.get(out["error"]["type"], 400), out["error"])
    return out


router = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])
pages = APIRouter()


@pages.get("/health", tags=["service"])
def health(request: Request) -> dict[str, Any]:
    """Liveness, and whether the database answers."""
    try:
        _ctx(request).get_queue().open_count()
        return {"status": "ok", "database": "ok", "version": eqflow.__version__}
    except errors.EqflowError as exc:
        return {"status": "degraded", "database": str(exc), "version": eqflow.__version__}


@pages.get("/", response_class=HTMLResponse, tags=["service"])
def status_page(request: Request) -> str:
    """A small status page: task counts per type and status, active pools."""
    queue = _ctx(request).get_queue()
    try:
        stats, pools = queue.stats(), queue.pools(active_only=True)
    except errors.EqflowError as exc:
        return f"<html><body><h1>eqflow service</h1><p>database: {html.escape(str(exc))}</p></body></html>"
    rows = "".join(f"<tr><td>{t}</td><td>{html.escape(s)}</td><td>{c}</td></tr>"
                   for t, by in stats.items() for s, c in by.items())
    pool_rows = "".join(f"<li>{html.escape(p.name)}-{p.pool_id} types {p.task_types}, {p.n_workers} workers</li>"
                        for p in pools)
    return ("<html><head><title>eqflow</title></head><body><h1>eqflow service</h1>"
            f"<h2>Tasks</h2><table border=1><tr><th>type</th><th>status</th><th>count</th></tr>{rows}</table>"
            f"<h2>Active pools</h2><ul>{pool_rows or '<li>none</li>'}</ul></body></html>")


@router.post("/tasks", tags=["tasks"])
def submit(request: Request, body: SubmitBody) -> dict[str, Any]:
    """Queue tasks (all or nothing). Repeating an idempotency key returns the first ids."""
    return _op(request, "submit", body.model_dump(), len(body.payloads))


@router.post("/tasks/claim", tags=["pools"])
def claim(request: Request, body: ClaimBody) -> dict[str, Any]:
    """Claim up to n queued tasks (highest priority first), waiting up to timeout for work."""
    return _op(request, "claim", body.model_dump(), body.n)


@router.post("/tasks/report", tags=["pools"])
def report(request: Request, body: ReportBody) -> dict[str, Any]:
    """Complete claimed tasks; only the current lease holder's report is accepted."""
    return _op(request, "report", body.model_dump(), len(body.results))


@router.post("/tasks/fail", tags=["pools"])
def fail(request: Request, body: FailBody) -> dict[str, Any]:
    """Report failed runs; retried until max_attempts when retry is true."""
    return _op(request, "report_failure", body.model_dump(), len(body.failures))


@router.post("/tasks/release", tags=["pools"])
def release(request: Request, body: LeasesBody) -> dict[str, Any]:
    """Give claimed tasks back to the queue unrun."""
    return _op(request, "release", {"tasks": body.model_dump()["tasks"]}, len(body.tasks))


@router.post("/tasks/heartbeat", tags=["pools"])
def heartbeat(request: Request, body: LeasesBody) -> dict[str, Any]:
    """Extend the leases of held tasks."""
    return _op(request, "extend_leases", body.model_dump(), len(body.tasks))


@router.post("/tasks/query", tags=["tasks"])
def query(request: Request, body: IdsBody) -> dict[str, Any]:
    """Status, priority, pool and result of many tasks."""
    return _op(request, "info", body.model_dump(), len(body.task_ids))


@router.post("/tasks/priorities", tags=["tasks"])
def priorities(request: Request, body: PrioritiesBody) -> dict[str, Any]:
    """Reprioritize queued tasks: one value, or one per task."""
    return _op(request, "set_priorities", body.model_dump(), len(body.task_ids))


@router.post("/tasks/cancel", tags=["tasks"])
def cancel(request: Request, body: IdsBody) -> dict[str, Any]:
    """Cancel queued tasks."""
    return _op(request, "cancel", body.model_dump(), len(body.task_ids))


@router.post("/tasks/completions", tags=["tasks"])
def completions(request: Request, body: CompletionsBody) -> dict[str, Any]:
    """Long-poll: finished tasks among task_ids, waiting up to timeout for at least one."""
    return _op(request, "wait_finished", body.model_dump(), len(body.task_ids))


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
    response = _error(401, "AuthError", "missing or invalid bearer token")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10])
    return _error(422, "InvalidInput", problems)


async def _eqflow_error(_: Request, exc: Exception) -> JSONResponse:
    body = error_dict(exc)
    return JSONResponse({"error": body}, status_code=STATUS.get(body["type"], 400))


async def _raised(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, _Raised)
    return JSONResponse({"error": exc.error}, status_code=exc.status)


def build_app(config: ServiceConfig | None = None, queue: LocalTaskQueue | None = None) -> FastAPI:
    """The FastAPI app (without the body-size guard; see create_app)."""
    cfg = config or load_config(os.environ.get("EQFLOW_SERVICE_CONFIG"))
    ctx = _Context(cfg, [t.encode() for t in cfg.accepted_tokens()], queue, owns_queue=queue is None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if ctx.owns_queue and ctx.queue is not None:
            ctx.queue.close()

    app = FastAPI(title="eqflow EMEWS service", version=eqflow.__version__, lifespan=lifespan,
                  description="The eqflow task-queue API over HTTP. Every /v1 route needs "
                              "`Authorization: Bearer <token>`.")
    app.state.ctx = ctx
    app.include_router(pages)
    app.include_router(router)
    app.add_exception_handler(_Unauthorized, _unauthorized)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(errors.EqflowError, _eqflow_error)
    app.add_exception_handler(_Raised, _raised)
    return app


def create_app(config: ServiceConfig | None = None, queue: LocalTaskQueue | None = None) -> Any:
    """The ASGI app to serve: build_app() behind the request-body size limit."""
    app = build_app(config, queue)
    return BodyLimit(app, app.state.ctx.cfg.max_body_bytes)


class _Unauthorized(Exception):
    pass


class _Raised(Exception):
    def __init__(self, status: int, error: dict[str, Any]) -> None:
        self.status = status
        self.error = error
