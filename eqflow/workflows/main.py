"""eqflow's Ackley/GPR model exploration: `eqflow run` and `python run.py`.

    eqflow run <exp_id> <cfg.yaml> [--fifo-baseline] [--dynamic-scaling]
    eqflow run <exp_id> --example local          # a config shipped with eqflow

Samples points, evaluates them as Ackley tasks on worker pools, retrains a Gaussian-process
surrogate every `retrain_after` results and reprioritizes every queued point by it, adding
pools as it goes; at `num_guesses` results it cancels what is queued and stops the pools.
Running again with an unfinished exp_id resumes it; with a finished one it changes nothing
and draws the outputs again from the database. Outputs (tasks.csv, summary.json,
best_so_far.png, queue_and_pools.png) go to <output_dir>/<exp_id>/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from eqflow.config import WorkflowConfig, load_workflow_config
from eqflow.errors import ConfigError, EqflowError
from eqflow.logs import setup_logging


def example_configs() -> dict[str, Path]:
    """The configs shipped with eqflow, by name (local, local_full, cluster_example)."""
    folder = resources.files("eqflow.cfgs")
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def config_path(args: argparse.Namespace) -> Path:
    if args.example:
        examples = example_configs()
        if args.example not in examples:
            raise ConfigError(f"no example config {args.example!r}; there are: {', '.join(sorted(examples))}")
        return examples[args.example]
    if args.config is None:
        raise ConfigError("give a config file, or --example NAME (see `eqflow examples`)")
    return Path(args.config)


def open_queue(cfg: WorkflowConfig, name: str, announce: Any = None) -> Any:
    from eqflow.task_queues import open_task_queue

    return open_task_queue(cfg, name, announce=announce)


def run_db_commands(cfg: WorkflowConfig, which: str) -> None:
    """dbs.<name>.start / .stop: shell commands (with ${var} already substituted)."""
    for name, db in cfg.dbs.items():
        command = getattr(db, which)
        if command:
            proc = subprocess.run(command, shell=True, capture_output=True, text=True)
            if proc.returncode != 0:
                raise ConfigError(f"dbs.{name}.{which} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp_id", help="experiment id; an unfinished one is resumed, a finished one reported")
    parser.add_argument("config", nargs="?", default=None, help="YAML config, e.g. cfgs/local.yaml")
    parser.add_argument("--example", default=None, metavar="NAME",
                        help="use a config shipped with eqflow instead (local, local_full, cluster_example)")
    parser.add_argument("--fifo-baseline", action="store_true",
                        help="also run the same points in plain FIFO order (<exp_id>-fifo) and plot both")
    scaling = parser.add_mutually_exclusive_group()
    scaling.add_argument("--dynamic-scaling", dest="dynamic", action="store_true", default=None,
                         help="start/stop pools from queue depth and free resources (scaling: in the config)")
    scaling.add_argument("--no-dynamic-scaling", dest="dynamic", action="store_false",
                         help="pools on the fixed schedule (extra_pools_after_retrain)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress display (default: a bar on a terminal, a status line every 10 s elsewhere)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log what happens (-vv: more)")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    return parser


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_experiment(cfg: WorkflowConfig, queue: Any, args: argparse.Namespace) -> dict[str, Any]:
    from eqflow.workflows.ackley_gpr import AckleyGPR
    from eqflow.workflows.ackley_outputs import is_finished, write_outputs

    baseline = f"{args.exp_id}-fifo"
    runs = [(args.exp_id, True)] + ([(baseline, False)] if args.fifo_baseline else [])
    for exp_id, reprioritize in runs:
        if is_finished(queue, exp_id):
            _say(f"{exp_id}: finished earlier - nothing to run; outputs drawn again from the database")
            continue
        AckleyGPR(cfg, exp_id, queue, reprioritize=reprioritize, dynamic_scaling=args.dynamic if reprioritize
                  else False, progress=not args.no_progress).run()
    out = Path(cfg.output_dir)
    if queue.experiment_status(baseline) is not None:
        write_outputs(queue, cfg, baseline, out / baseline)
    return write_outputs(queue, cfg, args.exp_id, out / args.exp_id, baseline=baseline)


def main(argv: list[str] | None = None, prog: str = "eqflow run") -> int:
    args = build_parser(prog).parse_args(argv)
    setup_logging(args.verbose, args.log_json)
    name = prog.split()[0]
    try:
        path = config_path(args)
        cfg = load_workflow_config(path)
        if cfg.funsearch is not None:
            raise ConfigError(f"{path} is a FunSearch config: run it with `eqflow funsearch run {args.exp_id} "
                              f"--cfg {path}`")
        run_db_commands(cfg, "start")
        queue = open_queue(cfg, cfg.tasks["ackley"].queue, announce=_say)
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except EqflowError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    try:
        summary = run_experiment(cfg, queue, args)
    except KeyboardInterrupt:
        _say(f"{name}: interrupted - run `{prog} {args.exp_id} ...` again to resume")
        return 130
    except EqflowError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    finally:
        queue.close()
        run_db_commands(cfg, "stop")
    out = Path(cfg.output_dir) / args.exp_id
    _say(human_summary(summary, out))
    print(json.dumps({**summary, "output": str(out)}))
    return 0


def human_summary(summary: dict[str, Any], out: Path) -> str:
    best = summary.get("best")
    line = (f"{summary['exp_id']}: {summary['status']} - {summary['evaluated']} evaluated "
            f"(budget {summary['num_guesses']}), best {best:.3f} after {summary['evaluations_to_best']} "
            f"evaluations" if best is not None else f"{summary['exp_id']}: {summary['status']} - nothing evaluated")
    if (fifo := summary.get("baseline")) and fifo.get("best") is not None:
        line += f" (FIFO: {fifo['best']:.3f} after {fifo['evaluations_to_best']})"
    return line + f"; outputs in {out}/"


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m eqflow.workflows.main"))
