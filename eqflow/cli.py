"""The `eqflow` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import eqflow
from eqflow.db.embedded import EmbeddedPostgres
from eqflow.errors import EqflowError
from eqflow.logs import setup_logging

# A stopping service answers what is in flight, then cuts what still waits (long-polls and
# completion streams hold up to 25 s; their clients retry and reopen).
SHUTDOWN_GRACE_S = 3


def _db(args: argparse.Namespace) -> int:
    embedded = EmbeddedPostgres(args.home)
    if args.action == "start":
        embedded.ensure_running()
        if line := embedded.announcement():
            print(line, file=sys.stderr)
        print(json.dumps(embedded.status()))
    elif args.action == "stop":
        print("stopped" if embedded.stop() else f"not running ({embedded.home})")
    elif args.action == "status":
        print(json.dumps(embedded.status()))
    elif args.action == "url":
        print(embedded.url())
    elif args.action == "reset":
        if not args.yes:
            print("reset deletes every experiment and task in the embedded database; add --yes", file=sys.stderr)
            return 2
        embedded.reset()
        print("reset")
    elif args.action == "init":
        from eqflow.db.migrate import latest_version, upgrade
        from eqflow.db.resolve import resolve_url

        url = resolve_url(args.url, home=args.home, migrate=False, announce=lambda line: print(line, file=sys.stderr))
        applied = upgrade(url)
        print(json.dumps({"applied": applied, "schema_version": latest_version()}))
    return 0


def _bench(args: argparse.Namespace) -> int:
    def say(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr)

    if args.suite == "service":
        from eqflow.bench import service_bench

        if args.long_polls:
            figures = service_bench.run_long_polls(args.url, long_polls=args.long_polls, clients=args.clients,
                                                   duration_s=args.seconds, progress=say)
        else:
            figures = service_bench.run(args.url, n_e2e=args.tasks or 20_000, workers=args.workers,
                                        rounds=args.rounds or 3, progress=say)
    elif args.suite == "pool":
        from eqflow.bench import pool_bench

        figures = pool_bench.run(args.url, progress=say)
    elif args.suite == "churn":
        from eqflow.bench import churn_bench

        figures = churn_bench.run(args.url, completions=args.tasks or 1_000_000, progress=say)
    elif args.suite == "scale":
        from eqflow.bench import scale_bench

        figures = scale_bench.run(args.url, million=args.million, progress=say)
    elif args.suite == "peers":
        from eqflow.bench import peers_bench

        figures = peers_bench.run(args.url, n=args.tasks or 5000, workers=args.workers, rounds=args.rounds or 2,
                                  me_queued=args.me_queued, me_claims=args.me_claims,
                                  peers=args.peers.split(",") if args.peers else None, progress=say)
        print(peers_bench.table(figures), file=sys.stderr)
    else:
        from eqflow.bench import queue_bench

        figures = queue_bench.run(args.url, n_e2e=args.tasks or 20_000, workers=args.workers, progress=say)
    print(json.dumps(figures))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from eqflow.queue import LocalTaskQueue

    with LocalTaskQueue(args.url, create_db=False) as queue:
        print(json.dumps({"tasks": queue.stats(args.exp_id),
                          "pools": [p.name + f" ({p.status})" for p in queue.pools(active_only=True)]}))
    return 0


def _service(args: argparse.Namespace) -> int:
    import uvicorn

    from eqflow.service.app import create_app
    from eqflow.service.config import load_config

    cfg = load_config(args.cfg)
    if args.port is not None:
        cfg.port = args.port
    if args.db_url:
        cfg.db_url = args.db_url
    app = create_app(cfg)  # checks the config (tokens, say) before anything listens
    processes = f", {cfg.workers} processes" if cfg.workers > 1 else ""
    print(f"eqflow service {eqflow.__version__} listening on http://{cfg.host}:{cfg.port}{processes} "
          f"(docs /docs, health /health; Ctrl-C stops it)", file=sys.stderr, flush=True)
    if cfg.workers == 1:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning",
                    timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
        return 0
    # Each process builds its own app from the config file named in $EQFLOW_SERVICE_CONFIG: the
    # config as given here (command-line overrides included), in a file only this user can read.
    import yaml

    fd, path = tempfile.mkstemp(prefix="eqflow-service-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as handle:
            yaml.safe_dump({"service": cfg.model_dump()}, handle)
        os.environ["EQFLOW_SERVICE_CONFIG"] = path
        uvicorn.run("eqflow.service.app:create_app", factory=True, workers=cfg.workers, host=cfg.host,
                    port=cfg.port, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    finally:
        os.unlink(path)
    return 0


def _examples(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from eqflow.workflows.main import example_configs

    for name, path in sorted(example_configs().items()):
        if args.copy:
            target = Path(args.copy) / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                print(f"kept {target} (exists)")
            else:
                shutil.copyfile(path, target)
                print(f"wrote {target}")
        else:
            print(f"{name:<18}{path}")
    if not args.copy:
        print("\nrun one: eqflow run <exp_id> --example local   copy them: eqflow examples --copy cfgs/")
    return 0


def _pool(argv: list[str]) -> int:
    from eqflow.cli_pool import main as pool_main

    return pool_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eqflow", description="eqflow: a PostgreSQL task queue for model exploration")
    parser.add_argument("--version", action="version", version=f"eqflow {eqflow.__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log what happens (-vv: more)")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("run", help="run the Ackley/GPR workflow: eqflow run <exp_id> <cfg> (see eqflow run --help)",
                   add_help=False)
    sub.add_parser("funsearch", help="run FunSearch: eqflow funsearch run <exp_id> --cfg <cfg> (see --help)",
                   add_help=False)
    examples = sub.add_parser("examples", help="list the example configs shipped with eqflow, or copy them")
    examples.add_argument("--copy", metavar="DIR", default=None, help="copy them into DIR (existing files are kept)")
    examples.set_defaults(func=_examples)

    db = sub.add_parser("db", help="the database: embedded cluster and schema")
    db.add_argument("action", choices=["init", "start", "stop", "status", "url", "reset"])
    db.add_argument("--home", default=None,
                    help="embedded cluster folder (default $EQFLOW_HOME, else the user's data folder)")
    db.add_argument("--url", default=None, help="for init: a postgresql:// URL instead of the embedded cluster")
    db.add_argument("--yes", action="store_true", help="confirm reset")
    db.set_defaults(func=_db)

    bench = sub.add_parser("bench", help="benchmarks; prints one JSON line")
    bench.add_argument("suite", choices=["queue", "pool", "service", "peers", "scale", "churn"])
    bench.add_argument("--url", default=None, help="server to use (default: embedded)")
    bench.add_argument("--tasks", type=int, default=None,
                       help="end-to-end tasks (default 20,000; peers: 5,000; churn: 1,000,000 per setting)")
    bench.add_argument("--workers", type=int, default=4, help="end-to-end worker processes")
    bench.add_argument("--long-polls", type=int, default=0,
                       help="service: short-request latency and RSS under this many idle long-polls instead")
    bench.add_argument("--clients", type=int, default=20, help="service --long-polls: active clients")
    bench.add_argument("--seconds", type=float, default=15.0, help="service --long-polls: seconds per scenario")
    bench.add_argument("--peers", default=None, help="peers: which (default eqsql,pgqueuer, those installed)")
    bench.add_argument("--rounds", type=int, default=None,
                       help="peers, service: alternating rounds (default 2 and 3)")
    bench.add_argument("--me-queued", type=int, default=100_000, help="peers: queued tasks of the ME workload")
    bench.add_argument("--me-claims", type=int, default=1000, help="peers: claims after the ME's reprioritization")
    bench.add_argument("--million", action="store_true", help="scale: 100,000 and 1,000,000 tasks (default 10x less)")
    bench.set_defaults(func=_bench)

    stats = sub.add_parser("stats", help="task counts per type and status")
    stats.add_argument("--exp-id", default=None)
    stats.add_argument("--url", default=None)
    stats.set_defaults(func=_stats)

    service = sub.add_parser("service", help="the EMEWS REST service")
    service.add_argument("action", choices=["start"])
    service.add_argument("--cfg", default=None, help="YAML with a service: section (tokens, db_url, port, limits)")
    service.add_argument("--port", type=int, default=None)
    service.add_argument("--db-url", default=None)
    service.set_defaults(func=_service)

    sub.add_parser("pool", help="worker pools: eqflow pool run|start|status|stop|list --help", add_help=False)
    from eqflow.dashboard.cli import add_parser as add_dashboard_parser

    add_dashboard_parser(sub)
    from eqflow.cli_config import add_config_parser

    add_config_parser(sub)
    from eqflow.cli_status import add_parser as add_status_parser

    add_status_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        from eqflow.workflows.main import main as run_main

        return run_main(argv[1:], prog="eqflow run")
    if argv[:1] == ["funsearch"]:
        from eqflow.funsearch.cli import main as funsearch_main

        return funsearch_main(argv[1:], prog="eqflow funsearch")
    setup_logging(argv.count("-v") + 2 * argv.count("-vv") + argv.count("--verbose"), "--log-json" in argv)
    if argv[:1] == ["pool"]:
        try:
            return _pool(argv[1:])
        except (EqflowError, ValueError, RuntimeError) as exc:
            print(f"eqflow pool: {exc}", file=sys.stderr)
            return 1
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except EqflowError as exc:
        print(f"eqflow: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
