"""The dashboard's routes (an APIRouter), served by the EMEWS service and by ``eqflow dashboard``.

    GET  /dashboard                 the page (no token: a redirect to the login page)
    GET  /dashboard/login           a form that takes the token; POST sets an HttpOnly,
    POST /dashboard/login           SameSite=Strict cookie (a digest of the token, not the token)
    POST /dashboard/logout
    GET  /dashboard/static/<file>   the page's own CSS and JS (shipped in the package)
    GET  /dashboard/api/experiments
    GET  /dashboard/api/snapshot?exp_id=...
    GET  /dashboard/api/stream?exp_id=...   server-sent events: a JSON snapshot every second

The API routes take the cookie or ``Authorization: Bearer <token>``; without either they answer
401. With no tokens at all (``eqflow dashboard`` on 127.0.0.1) every request is let in.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs

import anyio.to_thread
import psycopg
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from eqflow import errors
from eqflow.dashboard import queries

COOKIE = "eqflow_dashboard"
PREFIX = "/dashboard"
STATIC = {"dashboard.html": "text/html; charset=utf-8", "login.html": "text/html; charset=utf-8",
          "dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8",
          "panels.js": "text/javascript; charset=utf-8"}
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY",
           "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                      "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                                      "base-uri 'none'"}
UNAVAILABLE = {"error": {"type": "DatabaseUnavailable", "message": "the database is unavailable; retry later"}}
ExpId = Annotated[str, Query(min_length=1, max_length=200)]


def session_value(token: bytes) -> str:
    """What the cookie holds: a digest of the token (the cookie is no bearer token for /v1)."""
    return hmac.new(token, b"eqflow-dashboard-session-v1", hashlib.sha256).hexdigest()


class Auth:
    """Accepts a bearer token or the login cookie; every token is compared, always."""

    def __init__(self, tokens: Sequence[bytes]) -> None:
        self.tokens = list(tokens)
        self.sessions = [session_value(t).encode() for t in self.tokens]

    @property
    def open(self) -> bool:
        return not self.tokens

    def token_ok(self, offered: str) -> bool:
        given = offered.strip().encode("latin-1", "replace")
        ok = False
        for token in self.tokens:
            ok |= hmac.compare_digest(given, token)
        return ok and bool(given)

    def ok(self, request: Request) -> bool:
        if self.open:
            return True
        scheme, _, offered = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and self.token_ok(offered):
            return True
        cookie = request.cookies.get(COOKIE, "").encode("latin-1", "replace")
        ok = False
        for session in self.sessions:
            ok |= hmac.compare_digest(cookie, session)
        return ok and bool(cookie)

    def cookie_for(self, offered: str) -> str:
        given = offered.strip().encode("latin-1", "replace")
        return next(session_value(t) for t in self.tokens if hmac.compare_digest(given, t))


def _server_exiting() -> bool:
    """Whether the uvicorn server running us was told to stop (its SIGTERM handler is its bound
    handle_exit, which sets should_exit): then a stream ends at once, and the server need not
    wait out its viewers. Elsewhere: False (streams still end after stream_s)."""
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    return bool(getattr(server, "should_exit", False))


def _asset(name: str) -> str:
    return (resources.files("eqflow.dashboard") / "static" / name).read_text(encoding="utf-8")


def _page(name: str, status: int = 200, replace: tuple[str, str] | None = None) -> Response:
    text = _asset(name)
    if replace is not None:
        text = text.replace(*replace)
    return Response(text, status_code=status, media_type=STATIC[name], headers=HEADERS)


def _unauthorized() -> JSONResponse:
    return JSONResponse({"error": {"type": "AuthError", "message": "log in at /dashboard/login, or send "
                                                                   "Authorization: Bearer <token>"}},
                        status_code=401, headers={"WWW-Authenticate": "Bearer", **HEADERS})


class _Dashboard:
    """The routes' handlers, on the database ``db()`` returns."""

    def __init__(self, db: Callable[[], queries.Database], tokens: Sequence[bytes], stream_s: float,
                 interval_s: float) -> None:
        self.auth = Auth(tokens)
        self.stream_s = stream_s
        self.interval_s = interval_s
        self.snapshots = queries.Snapshots(lambda exp_id, memo: queries.snapshot(db(), exp_id, memo),
                                           min_interval_s=interval_s)
        self.listing = queries.Snapshots(lambda _, __: {"experiments": queries.experiments(db())},
                                         min_interval_s=interval_s)

    @staticmethod
    async def _guarded(fn: Callable[[], dict[str, Any]]) -> Response:
        try:
            return JSONResponse(await anyio.to_thread.run_sync(fn), headers=HEADERS)
        except (errors.DatabaseUnavailable, psycopg.OperationalError):
            return JSONResponse(UNAVAILABLE, status_code=503, headers=HEADERS)

    def page(self, request: Request) -> Response:
        if not self.auth.ok(request):
            return RedirectResponse(f"{PREFIX}/login", status_code=303, headers=HEADERS)
        return _page("dashboard.html", replace=('data-open=""', f'data-open="{"1" if self.auth.open else ""}"'))

    def login_form(self) -> Response:
        return _page("login.html")

    async def login(self, request: Request) -> Response:
        """The form's token (a urlencoded body) for a cookie; the token is never in a URL."""
        body = await request.body()
        offered = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[0]
        if self.auth.open:
            return RedirectResponse(PREFIX, status_code=303, headers=HEADERS)
        if not self.auth.token_ok(offered):
            return _page("login.html", 401, ('<p id="login-error" class="error" hidden>',
                                              '<p id="login-error" class="error">'))
        response = RedirectResponse(PREFIX, status_code=303, headers=HEADERS)
        response.set_cookie(COOKIE, self.auth.cookie_for(offered), httponly=True, samesite="strict", path=PREFIX,
                            secure=request.url.scheme == "https", max_age=7 * 86400)
        return response

    def logout(self) -> Response:
        response = RedirectResponse(f"{PREFIX}/login", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return response

    def static(self, name: str) -> Response:
        if name not in STATIC or name.endswith(".html"):
            return JSONResponse({"error": {"type": "NotFound", "message": "no such asset"}}, status_code=404)
        return Response(_asset(name), media_type=STATIC[name], headers=HEADERS)

    async def experiments(self, request: Request) -> Response:
        """Experiments, newest first (at most 200)."""
        if not self.auth.ok(request):
            return _unauthorized()
        return await self._guarded(lambda: self.listing.get(""))

    async def snapshot(self, request: Request, exp_id: ExpId) -> Response:
        """One experiment: tasks by status and over time, progress, failures, pools, decisions, events."""
        if not self.auth.ok(request):
            return _unauthorized()
        return await self._guarded(lambda: self.snapshots.get(exp_id))

    async def stream(self, request: Request, exp_id: Annotated[str | None, Query(max_length=200)] = None) -> Response:
        """Server-sent events: {experiments, snapshot} every second (snapshot: null without exp_id)."""
        if not self.auth.ok(request):
            return _unauthorized()
        return StreamingResponse(self._events(exp_id), media_type="text/event-stream",
                                 headers={**HEADERS, "X-Accel-Buffering": "no"})

    async def _events(self, exp_id: str | None) -> AsyncIterator[str]:
        def build() -> dict[str, Any]:
            return {**self.listing.get(""), "snapshot": self.snapshots.get(exp_id) if exp_id else None}

        yield "retry: 1000\n\n"
        ends = time.monotonic() + self.stream_s
        while True:
            try:
                data = await anyio.to_thread.run_sync(build)
                yield f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
            except (errors.DatabaseUnavailable, psycopg.OperationalError):
                yield f"event: problem\ndata: {json.dumps(UNAVAILABLE)}\n\n"
            next_at = time.monotonic() + self.interval_s
            if next_at > ends:
                return
            while time.monotonic() < next_at:
                if _server_exiting():
                    return
                await asyncio.sleep(min(0.25, max(next_at - time.monotonic(), 0.0)))


def make_router(db: Callable[[], queries.Database], tokens: Sequence[bytes], *, stream_s: float = 20.0,
                interval_s: float = 1.0) -> APIRouter:
    """The dashboard's routes on the database ``db()`` returns. tokens: accepted bearer tokens
    (none: no login). A stream ends after stream_s (the browser reconnects at once), so a server
    that stops never waits long for its viewers."""
    d = _Dashboard(db, tokens, stream_s, interval_s)
    router = APIRouter(prefix=PREFIX, tags=["dashboard"])
    hidden: dict[str, Any] = {"include_in_schema": False}
    router.add_api_route("", d.page, methods=["GET"], **hidden)
    router.add_api_route("/", d.page, methods=["GET"], **hidden)
    router.add_api_route("/login", d.login_form, methods=["GET"], **hidden)
    router.add_api_route("/login", d.login, methods=["POST"], **hidden)
    router.add_api_route("/logout", d.logout, methods=["POST"], **hidden)
    router.add_api_route("/static/{name}", d.static, methods=["GET"], **hidden)
    router.add_api_route("/api/experiments", d.experiments, methods=["GET"])
    router.add_api_route("/api/snapshot", d.snapshot, methods=["GET"])
    # An endless text/event-stream: not for OpenAPI clients (nor for fuzzers that read a body to its end).
    router.add_api_route("/api/stream", d.stream, methods=["GET"], **hidden)
    return router
