"""``eqflow config check|schema|docs``: validate a workflow config, print its JSON schema or
its key reference (docs/config.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from eqflow.errors import ConfigError

EXIT_INVALID = 2


def add_config_parser(sub: Any) -> None:
    """Register ``config`` on the ``eqflow`` subparsers."""
    config = sub.add_parser("config", help="workflow config files: check FILE, schema, docs",
                            description="Workflow config files (run.py EXP_ID FILE): validate one, or print "
                                        "the JSON schema or the reference of every key (docs/config.md).")
    config.add_argument("action", choices=["check", "schema", "docs"],
                        help="check: validate FILEs (exit 2 on a problem); schema: JSON schema; "
                             "docs: the key reference in Markdown")
    config.add_argument("files", nargs="*", metavar="FILE", help="for check: the YAML config file(s)")
    config.set_defaults(func=run_config)


def run_config(args: argparse.Namespace) -> int:
    if args.action != "check" and args.files:
        print(f"eqflow config {args.action}: takes no FILE", file=sys.stderr)
        return EXIT_INVALID
    if args.action == "schema":
        from eqflow.config import WorkflowConfig

        print(json.dumps(WorkflowConfig.model_json_schema(), indent=2))
        return 0
    if args.action == "docs":
        from eqflow.config_docs import render

        sys.stdout.write(render())
        return 0
    if not args.files:
        print("eqflow config check: give the config file(s) to check", file=sys.stderr)
        return EXIT_INVALID
    return max(check(path) for path in args.files)


def check(path: str) -> int:
    """Print OK and what the file holds, or every problem; 0 or EXIT_INVALID."""
    from eqflow.config import load_workflow_config

    try:
        cfg = load_workflow_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    counts = {"dbs": len(cfg.dbs), "task_queues": len(cfg.task_queues), "pools": len(cfg.pools),
              "tasks": len(cfg.tasks)}
    print(f"{path}: OK (" + ", ".join(f"{n} {key}" for key, n in counts.items()) + ")")
    return 0
