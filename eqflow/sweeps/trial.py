"""The trial side of ASHA sweeps: the task function a pool runs for a trial, and ``log()``.

A trial task's payload names its experiment, trial and generation; the train function, the cfg
and the pruning rule come from the database. ``log(metrics, iteration)`` writes the metrics (one
statement) and makes the trial's rung decisions in PostgreSQL, raising :class:`TrialPruned` when
the trial is stopped. The trial records its own end: completed, pruned, or failed with its
traceback (a crash is a failure, never a pruning). A worker that dies records nothing: its task's
lease runs out, the task is retried, and after ``max_attempts`` the driver fails the trial.

A trial run as a SLURM job step goes through ``python -m eqflow.sweeps.step PAYLOAD``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import numbers
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eqflow.db.connector import Connector
from eqflow.sweeps import refs
from eqflow.sweeps.asha import ASHA, TrialPruned
from eqflow.sweeps.jobs import output_to

_logger = logging.getLogger("eqflow.sweeps")

_connectors: dict[str, Connector] = {}


def _db() -> Connector:
    url = os.environ.get("EQFLOW_DB_URL")
    if not url:
        from eqflow.db.resolve import resolve_url

        url = resolve_url(None, migrate=False, create=False)
    conn = _connectors.get(url)
    if conn is None:
        conn = _connectors[url] = Connector(url, min_size=1, max_size=2, application_name="eqflow-sweep-trial")
    return conn


@dataclass
class _Trial:
    db: Connector
    exp_id: str
    trial_id: str
    asha: ASHA | None
    writer: bool = True  # rank 0 of a multi-task SLURM step writes; other ranks only train
    offset: int | None = None  # 1 when iterations count from 0
    decided: set[int] = field(default_factory=set)
    pruned: str | None = None


# The trial this thread (or task) runs: a context variable, so trials in threads of one process
# (a thread-mode pool) each log to their own.
_current: contextvars.ContextVar[_Trial | None] = contextvars.ContextVar("eqflow_sweep_trial", default=None)
_warned = False


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        item = getattr(value, "item", None)  # numpy/torch scalars
        value = item() if callable(item) else value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}: {value!r}")
    return float(value)


def log(metrics: dict[str, Any], iteration: int) -> None:
    """Record a trial's metrics at an iteration (an epoch, a step); raises TrialPruned when
    ASHA stops the trial, TypeError for a metric that is not a number. Outside a trial it does
    nothing (a train function can run on its own)."""
    global _warned
    if not isinstance(metrics, dict) or not metrics:
        raise TypeError(f"metrics must be a non-empty dict of name -> number, got {metrics!r}")
    if isinstance(iteration, bool) or not isinstance(iteration, numbers.Integral) or iteration < 0:
        raise TypeError(f"iteration must be an integer >= 0, got {iteration!r}")
    values = {str(k): _number(str(k), v) for k, v in metrics.items()}
    trial = _current.get()
    if trial is None:
        if not _warned:
            _logger.warning("eqflow.sweeps.log() called outside a trial: metrics not recorded")
            _warned = True
        return
    if trial.pruned:
        raise TrialPruned(trial.pruned)
    if not trial.writer:
        return
    it = int(iteration)
    trial.db.execute("sweep_metrics_insert", {"exp_id": trial.exp_id, "trial_id": trial.trial_id, "iteration": it,
                                              "metrics": list(values), "values": list(values.values())})
    if trial.offset is None:
        trial.offset = 1 if it == 0 else 0
        trial.db.execute("sweep_trial_offset", {"exp_id": trial.exp_id, "trial_id": trial.trial_id,
                                                "offset": trial.offset})
    asha = trial.asha
    if asha is None or asha.metric not in values:
        return
    t = it + trial.offset
    why = _judge(trial, asha, t, values[asha.metric])
    if why:
        trial.pruned = why
        raise TrialPruned(why)


def _judge(trial: _Trial, asha: ASHA, t: int, value: float) -> str | None:
    """Why the trial is pruned at this report, or None."""
    key = {"exp_id": trial.exp_id, "trial_id": trial.trial_id}
    if asha.rule == "async":
        for rung in asha.judged_rungs:
            if rung > t:
                break
            if rung in trial.decided:
                continue
            row = trial.db.fetch_one("sweep_decide_rung", {**key, "rung": rung, "value": value,
                                                           "rf": asha.reduction_factor, "mode": asha.mode})
            trial.decided.add(rung)
            if row is not None and row[0] == "prune":
                return f"pruned at rung {rung} ({asha.metric}={value:g} at t={t})"
        return None
    if t in asha.rungs:
        trial.db.execute("sweep_rung_record", {**key, "rung": t, "value": value})
    rows = trial.db.fetch_all("sweep_percentile_check", {**key, "rf": asha.reduction_factor, "mode": asha.mode})
    if rows:
        trial.db.execute("sweep_rung_pruned", {**key, "rung": rows[0][0]})
        return f"pruned at rung {rows[0][0]} (below the 1/{asha.reduction_factor} percentile of {asha.metric})"
    return None


def run_trial(payload: str) -> str:
    """The task function of a trial (see the module docstring). Returns the trial's end as JSON."""
    spec = json.loads(payload)
    db = _db()
    rank = os.environ.get("SLURM_PROCID", "0")
    writer = rank == "0"
    key = {"exp_id": spec["exp_id"], "trial_id": spec["trial_id"]}
    row = db.fetch_one("sweep_trial_start", {**key, "generation": spec["generation"]})
    if row is None:  # ended already, or the experiment was overwritten: nothing to run
        return json.dumps({"status": "skipped"})
    asha_json, train_text, runtime, cfg = row
    asha = ASHA.from_json(asha_json) if asha_json else None
    trial = _Trial(db, spec["exp_id"], spec["trial_id"], asha, writer)
    token = _current.set(trial)
    status, error = "completed", None
    out = Path(spec["log_file"]) if spec.get("log_file") else None
    try:
        refs.extend_path(runtime.get("path"))
        train = refs.loads(train_text, runtime.get("script"))
        if out is not None:
            with output_to(out):
                _call(train, cfg)
        else:
            _call(train, cfg)
    except TrialPruned:
        status = "pruned"
    except BaseException:  # the trial crashed: a failure with its traceback, not a pruning
        status, error = "failed", traceback.format_exc()
    finally:
        _current.reset(token)
    if trial.pruned and status != "failed":
        status = "pruned"  # train swallowed TrialPruned: it was pruned all the same
    if writer:
        db.execute("sweep_trial_finish", {**key, "status": status, "error": error})
    return json.dumps({"status": status, "error": error})


def _call(train: Any, cfg: dict[str, Any]) -> None:
    train(cfg)  # what it returns is not recorded: metrics go through log()
