"""``eqflow dashboard``: the dashboard on its own, on the configured or embedded database."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

TOKEN_ENV = "EQFLOW_DASHBOARD_TOKEN"
HELP = f"""Serve the live dashboard at http://HOST:PORT/dashboard.
Without a token (${TOKEN_ENV}) there is no login, so it binds only to a loopback address
(127.0.0.1 by default; reach it from elsewhere over `ssh -L`). With ${TOKEN_ENV} set
(several: comma-separated) it asks for the token at /dashboard/login and may bind anywhere."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dashboard", help="the live dashboard in a browser (see eqflow dashboard --help)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help=f"bind address (default 127.0.0.1; another needs ${TOKEN_ENV})")
    p.add_argument("--port", type=int, default=8766, help="port (default 8766; 0: any free port)")
    p.add_argument("--url", default=None, help="database URL (default: $EQFLOW_DB_URL or the embedded cluster)")
    p.set_defaults(func=run)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import socket

    import uvicorn
    from fastapi import FastAPI

    from eqflow.dashboard.routes import make_router
    from eqflow.db.connector import Connector
    from eqflow.db.resolve import resolve_url

    tokens = [t.strip().encode() for t in os.environ.get(TOKEN_ENV, "").split(",") if t.strip()]
    if not tokens and not _loopback(args.host):
        print(f"eqflow dashboard: without a token it binds only to 127.0.0.1; set ${TOKEN_ENV} to bind "
              f"to {args.host}", file=sys.stderr)
        return 2
    url = resolve_url(args.url, migrate=False, create=False)
    db = Connector(url, max_size=4, reconnect_timeout=10.0, application_name="eqflow-dashboard")
    app = FastAPI(title="eqflow dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(make_router(lambda: db, tokens))
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]
    print(f"eqflow dashboard on http://{host if ':' not in host else f'[{host}]'}:{port}/dashboard "
          f"({'login with the token' if tokens else 'no login: loopback only'}; Ctrl-C stops it)",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        db.close()
    return 0
