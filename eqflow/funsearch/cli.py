"""`eqflow funsearch run <exp_id> --cfg cfgs/funsearch_local.yaml` (or ``python -m eqflow.funsearch run``).

Runs FunSearch on the task table: sampler and evaluator pools from the config, the programs
database in PostgreSQL, the spec (default: the bundled deletion_codes) evaluated in a sandbox.
An unfinished exp_id resumes; a finished one runs nothing and draws its outputs again. Outputs
go to <output_dir>/<exp_id>/: best_program.py, islands/, sizes.csv and sizes.md, progress.png,
programs.csv, summary.json, and a backup of the config and the spec (config.yaml, spec.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from eqflow.errors import ConfigError, EqflowError
from eqflow.funsearch.scaling import add_scaling_arguments, settings_from_args
from eqflow.logs import setup_logging


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run (or resume) a FunSearch experiment")
    run.add_argument("exp_id", help="experiment id; an unfinished one is resumed, a finished one reported")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--cfg", default=None, help="YAML config with a funsearch: section, e.g. "
                                                    "cfgs/funsearch_local.yaml")
    source.add_argument("--example", default=None, metavar="NAME",
                        help="a config shipped with eqflow instead (funsearch_local)")
    run.add_argument("--spec-path", default=None, help="the problem spec (.py); default: the config's "
                                                       "funsearch.spec (the bundled deletion_codes)")
    run.add_argument("--max-evaluations", type=int, default=None, help="override funsearch.max_evaluations")
    run.add_argument("--max-seconds", type=float, default=None, help="override funsearch.max_seconds")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress display (default: a bar on a terminal, a status line every 10 s elsewhere)")
    add_scaling_arguments(run)
    run.add_argument("-v", "--verbose", action="count", default=0, help="log what happens (-vv: more)")
    run.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    return parser


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _config(args: argparse.Namespace) -> Any:
    from eqflow.config import load_workflow_config
    from eqflow.workflows.main import example_configs

    if args.example:
        examples = example_configs()
        if args.example not in examples:
            raise ConfigError(f"no example config {args.example!r}; there are: {', '.join(sorted(examples))}")
        path = examples[args.example]
    elif args.cfg:
        path = Path(args.cfg)
    else:
        raise ConfigError("give --cfg FILE or --example funsearch_local")
    cfg = load_workflow_config(path)
    if cfg.funsearch is None:
        raise ConfigError(f"{path}: no funsearch: section (see cfgs/funsearch_local.yaml)")
    updates: dict[str, Any] = {k: v for k, v in {"spec": args.spec_path, "max_evaluations": args.max_evaluations,
                                                 "max_seconds": args.max_seconds}.items() if v is not None}
    try:
        updates["scaling"] = settings_from_args(cfg.funsearch.scaling, args)
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"dynamic scaling flags: {problems}") from None
    if updates:  # the config was validated; the flags were by settings_from_args and argparse
        cfg = cfg.model_copy(update={"funsearch": cfg.funsearch.model_copy(update=updates)})
    return cfg, path


def run(args: argparse.Namespace, prog: str) -> int:
    from eqflow.funsearch.engine import FunSearch
    from eqflow.funsearch.outputs import write_outputs
    from eqflow.funsearch.sandbox import isolation_available
    from eqflow.funsearch.spec import Spec, SpecError
    from eqflow.workflows.main import open_queue, run_db_commands

    try:
        cfg, path = _config(args)
        spec = Spec.load(cfg.funsearch.spec)
        run_db_commands(cfg, "start")
        queue = open_queue(cfg, cfg.tasks["sample"].queue, announce=_say)
    except (ConfigError, SpecError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except EqflowError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    out = Path(cfg.output_dir) / args.exp_id
    try:
        engine = FunSearch(queue, cfg, args.exp_id, out=out, progress=not args.no_progress, spec=spec)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / "config.yaml")
        (out / "spec.py").write_text(spec.text)
        engine.check_experiment()
        if queue.experiment_status(args.exp_id) == "finished":
            _say(f"{args.exp_id}: finished earlier - nothing to run; outputs drawn again from the database")
            reason = "finished earlier"
        else:
            _say(f"{args.exp_id}: spec {spec.name}, {len(engine.tests)} tests, sandbox: {isolation_available()}")
            reason = engine.run().reason
        summary = write_outputs(queue.db, args.exp_id, spec, engine.tests, out,
                                extra={"status": queue.experiment_status(args.exp_id), "stop_reason": reason,
                                       "targets": engine.targets})
    except KeyboardInterrupt:
        _say(f"{prog}: interrupted - run `{prog} {args.exp_id} ...` again to resume")
        return 130
    except (ValueError, EqflowError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    finally:
        queue.close()
        run_db_commands(cfg, "stop")
    _say(human_summary(summary, out))
    print(json.dumps({k: summary[k] for k in ("exp_id", "status", "evaluated", "programs", "best_score",
                                              "best_scores", "stop_reason")} | {"output": str(out)}))
    return 0


def human_summary(summary: dict[str, Any], out: Path) -> str:
    sizes = ", ".join(f"{_test_label(r)}: {r['size']}" + (f"/{r['known']}" if r.get("known") is not None else "")
                      for r in summary["sizes"])
    return (f"{summary['exp_id']}: {summary['status']} ({summary['stop_reason']}) - {summary['evaluated']} evaluated, "
            f"{summary['programs']} programs; best {sizes}; outputs in {out}/")


def _test_label(row: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in row.items() if k not in ("size", "known"))


def main(argv: list[str] | None = None, prog: str = "eqflow funsearch") -> int:
    args = build_parser(prog).parse_args(argv)
    setup_logging(args.verbose, args.log_json)
    return run(args, f"{prog} run")


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m eqflow.funsearch"))
