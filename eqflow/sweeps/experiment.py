"""ASHA experiments (slurm_sweeps' API) on eqflow: every trial is a task, its state a row.

``Experiment.run`` records the sampled trials in ``sweep_trials``, submits one task per trial
(type ``TRIAL_TASK_TYPE``) and starts a pool of ``max_concurrent_trials`` workers: local worker
processes, or, inside an ``sbatch`` allocation, workers that each start a trial as an ``srun``
job step. It prints a summary table every ``summary_interval_in_sec`` and returns the metrics as
a DataFrame. Kill the driver and run it again with ``restore=True``: the recorded trials are
taken up where they are (running ones are re-attached, ended ones stay as they ended).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from eqflow.queue import LocalTaskQueue
from eqflow.sweeps import refs
from eqflow.sweeps.asha import ASHA
from eqflow.sweeps.frames import engine_for, read_frame
from eqflow.sweeps.pools import SweepPools
from eqflow.sweeps.space import sample_cfgs, trial_id
from eqflow.workers.launchers import PoolSpec

log = logging.getLogger("eqflow.sweeps")

TRIAL_TASK_TYPE = 9101
TRIAL_FN = "eqflow.sweeps.trial:run_trial"


class Status(str, Enum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    PRUNED = "pruned"
    FAILED = "failed"


TERMINAL = (Status.COMPLETED, Status.PRUNED, Status.FAILED)


@dataclass
class SlurmCfg:
    """How each trial runs as a job step: ``srun --exclusive --nodes=N --ntasks=M ARGS``."""

    exclusive: bool = True
    nodes: int = 1
    ntasks: int = 1
    args: str = ""

    def srun(self) -> str:
        parts = ["srun", "--exclusive" if self.exclusive else "", f"--nodes={self.nodes}",
                 f"--ntasks={self.ntasks}", self.args]
        return " ".join(p for p in parts if p)


@dataclass
class Trial:
    """One trial: its cfg, id (six hex digits hashed from the cfg), state and metrics."""

    cfg: dict[str, Any]
    trial_id: str = ""
    status: Status = Status.SCHEDULED
    error: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    metrics: dict[str, list[float]] = field(default_factory=dict)
    iterations: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.trial_id = self.trial_id or trial_id(self.cfg)

    @property
    def runtime(self) -> float | None:
        """Seconds run so far (or in all, once ended)."""
        if self.start_time is None:
            return None
        return (self.end_time if self.end_time is not None else time.time()) - self.start_time

    def is_terminated(self) -> bool:
        return self.status in TERMINAL

    @property
    def terminated(self) -> bool:
        return self.is_terminated()


def _exp_id(name: str, local_dir: Path) -> str:
    return f"asha-{name[:120]}-{hashlib.sha1(str(local_dir.resolve()).encode()).hexdigest()[:10]}"


def _in_slurm_allocation() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID")) and shutil.which("srun") is not None


def _db_url(db_url: str | None) -> str:
    from eqflow.db.resolve import resolve_url

    return resolve_url(db_url)


class Result:
    """An experiment's trials and metrics, read from the database (also while it runs)."""

    def __init__(self, experiment: str, local_dir: str | Path = "./slurm-sweeps", *, db_url: str | None = None) -> None:
        self.name = experiment
        self.local_dir = Path(local_dir)
        self.exp_id = _exp_id(experiment, self.local_dir)
        self.url = _db_url(db_url)
        self._engine = engine_for(self.url)
        exp = read_frame(self._engine, "sweep_trials_frame", {"exp_id": self.exp_id})
        if exp.empty:
            raise ValueError(f"no experiment {experiment!r} in {self.local_dir} (id {self.exp_id})")

    def metrics_frame(self) -> pd.DataFrame:
        """Long format: trial_id, iteration, metric, value, logged_at."""
        return read_frame(self._engine, "sweep_metrics_frame", {"exp_id": self.exp_id})

    def trials_frame(self) -> pd.DataFrame:
        return read_frame(self._engine, "sweep_trials_frame", {"exp_id": self.exp_id})

    def rungs_frame(self) -> pd.DataFrame:
        """Every rung record in the order decisions were made."""
        return read_frame(self._engine, "sweep_rungs_frame", {"exp_id": self.exp_id})

    @property
    def trials(self) -> list[Trial]:
        trials = self.trials_frame()
        long = self.metrics_frame()
        by_trial = {str(tid): group for tid, group in long.groupby("trial_id")} if not long.empty else {}
        out = []
        for row in trials.itertuples():
            trial = Trial(json.loads(row.cfg), row.trial_id, Status(row.status), row.error,
                          _ts(row.started_at), _ts(row.ended_at))
            mine = by_trial.get(str(row.trial_id))
            if mine is not None:
                for metric, group in mine.groupby("metric"):  # rows come ordered by iteration
                    trial.metrics[str(metric)] = [float(v) for v in group["value"]]
                    trial.iterations[str(metric)] = [int(i) for i in group["iteration"]]
            out.append(trial)
        return out

    def dataframe(self) -> pd.DataFrame:
        """Wide format: one row per trial and iteration, a column per metric, the trial's status
        and its cfg values (``cfg.<key>``)."""
        return wide_frame(self.trials_frame(), self.metrics_frame())

    def best_trial(self, metric: str | None = None, mode: str | None = None) -> Trial:
        """The trial with the best last value of ``metric`` (default: ASHA's metric and mode)."""
        if metric is None or mode is None:
            exp = read_frame(self._engine, "sweep_experiment_get", {"exp_id": self.exp_id})
            asha = (exp["asha"].iloc[0] or {}) if not exp.empty else {}
            metric = metric or asha.get("metric")
            mode = mode or asha.get("mode", "min")
        if metric is None:
            raise ValueError("best_trial needs a metric (the experiment has no ASHA to take it from)")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        scored = [(t.metrics[metric][-1], t) for t in self.trials if t.metrics.get(metric)]
        scored = [(v, t) for v, t in scored if v == v]  # NaN never wins
        if not scored:
            raise ValueError(f"no trial logged {metric!r}")
        return (min if mode == "min" else max)(scored, key=lambda vt: vt[0])[1]

    def plot(self, path: str | Path, metric: str | None = None) -> Path:
        return plot_learning_curves(self.trials, Path(path), metric)


def _ts(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and value != value) or pd.isna(value):
        return None
    return float(pd.Timestamp(value).timestamp())


def wide_frame(trials: pd.DataFrame, long: pd.DataFrame) -> pd.DataFrame:
    if long.empty:
        wide = pd.DataFrame(columns=["trial_id", "iteration"])
    else:
        wide = long.pivot_table(index=["trial_id", "iteration"], columns="metric", values="value",
                                aggfunc="last").reset_index()
        wide.columns.name = None
    info = trials[["trial_id", "status", "cfg"]].copy()
    cfgs = pd.json_normalize([json.loads(c) for c in info.pop("cfg")]).add_prefix("cfg.")
    info = pd.concat([info.reset_index(drop=True), cfgs], axis=1)
    return wide.merge(info, on="trial_id", how="right").sort_values(["trial_id", "iteration"],
                                                                     ignore_index=True)


def plot_learning_curves(trials: list[Trial], path: Path, metric: str | None = None) -> Path:
    """Learning curves of every trial; pruned trials faded, failed ones dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric is None:
        names = sorted({m for t in trials for m in t.metrics})
        metric = names[0] if names else "metric"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {Status.COMPLETED: {"alpha": 0.9, "linewidth": 1.6},
              Status.PRUNED: {"alpha": 0.2, "linewidth": 1.0},
              Status.FAILED: {"alpha": 0.6, "linestyle": "--", "color": "tab:red"}}
    seen: set[Status] = set()
    for trial in trials:
        if metric not in trial.metrics:
            continue
        style = styles.get(trial.status, {"alpha": 0.5})
        label = trial.status.value if trial.status not in seen else None
        seen.add(trial.status)
        ax.plot(trial.iterations[metric], trial.metrics[metric], label=label, **style)  # type: ignore[arg-type]
    ax.set_xlabel("iteration")
    ax.set_ylabel(metric)
    ax.set_title(f"learning curves ({len(trials)} trials; pruned faded)")
    if seen:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class Experiment:
    """An ASHA sweep (see the module docstring).

    train: ``train(cfg)``, importable by workers (a module's function, or one defined in the
    driver script); it calls ``log(metrics, iteration)``. cfg: a dict with search spaces.
    restore: take up the recorded experiment of this name in ``local_dir``. overwrite: replace
    it. db_url (eqflow's): the database (default ``$EQFLOW_DB_URL`` or the embedded cluster).
    """

    def __init__(self, train: Any, cfg: dict[str, Any], name: str = "MySweep",
                 local_dir: str | Path = "./slurm-sweeps", asha: ASHA | None = None,
                 slurm_cfg: SlurmCfg | None = None, restore: bool = False, overwrite: bool = False, *,
                 db_url: str | None = None, task_type: int = TRIAL_TASK_TYPE, seed: int | None = None,
                 start_pools: bool = True, max_attempts: int = 2, stream: TextIO | None = None) -> None:
        if not callable(train):
            raise TypeError(f"train must be callable, got {type(train).__name__}")
        if not isinstance(cfg, dict):
            raise TypeError(f"cfg must be a dict, got {type(cfg).__name__}")
        if restore and overwrite:
            raise ValueError("restore and overwrite exclude each other")
        self.train, self.cfg, self.name = train, cfg, name
        self.local_dir = Path(local_dir)
        self.asha = asha
        self.slurm_cfg = slurm_cfg if slurm_cfg is not None else (SlurmCfg() if _in_slurm_allocation() else None)
        self.restore, self.overwrite = restore, overwrite
        self.task_type, self.seed, self.start_pools = task_type, seed, start_pools
        self.max_attempts = max_attempts
        self.stream = stream if stream is not None else sys.stdout
        self.exp_id = _exp_id(name, self.local_dir)
        self.path = self.local_dir / name
        self.queue = LocalTaskQueue(db_url)
        self.url = self.queue.url
        self._prepare()

    # -- set up ---------------------------------------------------------------------------
    def _prepare(self) -> None:
        db = self.queue.db
        row = db.fetch_one("sweep_experiment_get", {"exp_id": self.exp_id})
        runtime = json.dumps({"script": refs.main_path(), "path": refs.driver_path()})
        train = refs.dumps(self.train)
        if row is not None and self.restore:
            self.generation = str(row[2])
            if row[3] and self.asha is not None and ASHA.from_json(row[3]) != self.asha:
                raise ValueError(f"restore: experiment {self.name!r} was recorded with {row[3]}, not {self.asha}")
            self.asha = ASHA.from_json(row[3]) if row[3] else None
            db.execute("sweep_experiment_refresh", {"exp_id": self.exp_id, "train": train, "runtime": runtime})
            return
        if row is not None:
            if not self.overwrite:
                raise FileExistsError(f"experiment {self.name!r} exists in {self.local_dir}: "
                                      "pass restore=True to continue it or overwrite=True to replace it")
            self._cancel_open_tasks()
            db.execute("sweep_experiment_delete", {"exp_id": self.exp_id})
            shutil.rmtree(self.path, ignore_errors=True)
        self.generation = uuid.uuid4().hex
        db.execute("sweep_experiment_create", {
            "exp_id": self.exp_id, "name": self.name, "local_dir": str(self.local_dir.resolve()),
            "generation": self.generation, "asha": json.dumps(self.asha.to_json()) if self.asha else None,
            "train": train, "runtime": runtime})

    def _cancel_open_tasks(self) -> None:
        rows = self.queue.db.fetch_all("sweep_trials_list", {"exp_id": self.exp_id})
        open_ids = [r[3] for r in rows if r[3] is not None and r[4] not in ("completed", "pruned", "failed")]
        if open_ids:
            try:
                self.queue.cancel(open_ids)
            except Exception:  # some finished meanwhile: cancel the rest one by one
                for tid in open_ids:
                    try:
                        self.queue.cancel([tid])
                    except Exception:
                        log.debug("not canceled", extra={"task_id": tid})

    def _trials(self, n_trials: int) -> list[tuple[Any, ...]]:
        db = self.queue.db
        rows = db.fetch_all("sweep_trials_list", {"exp_id": self.exp_id})
        if not rows:
            cfgs = sample_cfgs(self.cfg, n_trials, self.seed)
            db.execute("sweep_trials_insert", {"exp_id": self.exp_id, "trial_ids": [trial_id(c) for c in cfgs],
                                               "seqs": list(range(len(cfgs))),
                                               "cfgs": [json.dumps(c) for c in cfgs]})
            rows = db.fetch_all("sweep_trials_list", {"exp_id": self.exp_id})
        elif n_trials != len(rows):
            log.info("restored experiment keeps its trials", extra={"trials": len(rows), "n_trials": n_trials})
        return rows

    def _submit(self, rows: list[tuple[Any, ...]]) -> None:
        """One task per trial without one. The idempotency key names the trials, so a driver
        killed between submitting and recording gets the same tasks back on restore."""
        todo = [r for r in rows if r[3] is None and r[4] not in ("completed", "pruned", "failed")]
        if not todo:
            return
        ids = [r[0] for r in todo]
        key = hashlib.sha1(f"{self.generation}|{','.join(ids)}".encode()).hexdigest()
        logs = self.path / "trials"
        payloads = [json.dumps({"exp_id": self.exp_id, "trial_id": tid, "generation": self.generation,
                                "log_file": str((logs / f"{tid}.log").resolve())}) for tid in ids]
        futures = self.queue.submit_many(self.exp_id, self.task_type, payloads, idempotency_key=key,
                                         max_attempts=self.max_attempts)
        self.queue.db.execute("sweep_trials_set_tasks", {"exp_id": self.exp_id, "trial_ids": ids,
                                                          "task_ids": [f.task_id for f in futures]})

    def _concurrency(self, max_concurrent_trials: int | None) -> int:
        if max_concurrent_trials is not None:
            if max_concurrent_trials < 1:
                raise ValueError(f"max_concurrent_trials must be >= 1, got {max_concurrent_trials}")
            return max_concurrent_trials
        if self.slurm_cfg is not None:
            ntasks = int(os.environ.get("SLURM_NTASKS") or os.environ.get("SLURM_NPROCS") or 1)
            return max(1, ntasks // self.slurm_cfg.ntasks)
        return os.cpu_count() or 1

    def _start_pool(self, pools: SweepPools, workers: int) -> None:
        name = f"{self.exp_id[:60]}-trials"
        if self.slurm_cfg is None:
            spec = PoolSpec([self.task_type], fn=TRIAL_FN, name=name, workers=workers)
        else:  # each worker starts its trial as a job step of this allocation
            cmd = f"{self.slurm_cfg.srun()} {sys.executable} -m eqflow.sweeps.step {{payload}}"
            spec = PoolSpec([self.task_type], cmd=cmd, name=name, workers=workers, threads=True)
        pools.start(spec, {"EQFLOW_LAUNCHER": "slurm" if self.slurm_cfg else "local"})

    # -- run ------------------------------------------------------------------------------
    def run(self, n_trials: int = 1, max_concurrent_trials: int | None = None,
            summary_interval_in_sec: float = 5.0, nr_of_rows_in_summary: int = 10,
            summarize_cfg_and_metrics: bool | list[str] = True) -> pd.DataFrame:
        """Run (or take up) the experiment's trials; returns the metrics (wide format)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.queue.rescue_expired()  # a killed driver's lost workers: their trials go back to the queue
        rows = self._trials(n_trials)
        self._submit(rows)
        rows = self.queue.db.fetch_all("sweep_trials_list", {"exp_id": self.exp_id})
        workers = self._concurrency(max_concurrent_trials)
        pending = {r[3]: r[0] for r in rows if r[4] not in ("completed", "pruned", "failed")}
        print(f"Running the experiment '{self.name}' ({time.ctime()}): {len(rows)} trials, {len(pending)} to run, "
              f"at most {workers} at once ({'srun job steps' if self.slurm_cfg else 'local workers'})",
              file=self.stream, flush=True)
        pools = SweepPools(self.url, log_dir=self.path / "pool-logs")
        engine = engine_for(self.url)
        started = time.monotonic()
        watch = self.queue.watch_completions({self.exp_id})
        try:
            if pending and self.start_pools:
                self._start_pool(pools, workers)
            last = time.monotonic()
            while pending:
                wait = max(0.05, min(1.0, summary_interval_in_sec - (time.monotonic() - last)))
                rows_done = watch.finished(pending, wait)  # type: ignore[arg-type]
                lost = [(pending[t], err or f"task {st}") for t, st, _res, err, _p in rows_done
                        if st != "complete" and t in pending]
                for task_id, *_ in rows_done:
                    pending.pop(task_id, None)
                if lost:  # worker lost max_attempts times, or canceled: the trial failed
                    self.queue.db.execute("sweep_trials_fail", {"exp_id": self.exp_id,
                                                                "trial_ids": [t for t, _ in lost],
                                                                "errors": [e for _, e in lost]})
                if pending and self.start_pools:
                    pools.revive()
                if time.monotonic() - last >= summary_interval_in_sec:
                    self._summary(engine, started, nr_of_rows_in_summary, summarize_cfg_and_metrics)
                    last = time.monotonic()
        finally:
            watch.close()
            pools.stop()
        self._summary(engine, started, None, summarize_cfg_and_metrics, sort_by="runtime_s")
        trials_df = read_frame(engine, "sweep_trials_frame", {"exp_id": self.exp_id})
        long = read_frame(engine, "sweep_metrics_frame", {"exp_id": self.exp_id})
        engine.dispose()
        result = Result.__new__(Result)
        result.name, result.local_dir, result.exp_id, result.url = self.name, self.local_dir, self.exp_id, self.url
        result._engine = engine_for(self.url)
        metric = self.asha.metric if self.asha else None
        try:
            plot_learning_curves(result.trials, self.path / "learning_curves.png", metric)
        except Exception as exc:  # a plot is a nicety: never lose the run's results over it
            log.warning("learning-curve plot failed", extra={"error": str(exc)})
        finally:
            result._engine.dispose()
        return wide_frame(trials_df, long)

    def _summary(self, engine: Any, started: float, n_rows: int | None, columns: bool | list[str],
                 sort_by: str | None = None) -> None:
        trials = read_frame(engine, "sweep_trials_frame", {"exp_id": self.exp_id})
        long = read_frame(engine, "sweep_metrics_frame", {"exp_id": self.exp_id})
        counts = trials["status"].value_counts().to_dict()
        ended = sum(counts.get(s.value, 0) for s in TERMINAL)
        best = None
        if self.asha is not None and not long.empty:
            values = long[long["metric"] == self.asha.metric]["value"].dropna()
            if not values.empty:
                best = float(values.min() if self.asha.mode == "min" else values.max())
        try:  # the workflow's progress record, for dashboards (as the other workflows write)
            self.queue.record_event(self.exp_id, "progress", {
                "done": ended, "target": len(trials), "best": best, "running": counts.get("running", 0),
                "pruned": counts.get("pruned", 0), "failed": counts.get("failed", 0)})
        except Exception as exc:  # a dashboard nicety never stops a sweep
            log.debug("progress event not recorded", extra={"error": str(exc)})
        lines = ["=== Status ===", f"Elapsed time: {time.monotonic() - started:.0f} s",
                 f"Terminated trials: {ended}/{len(trials)} ({counts.get('running', 0)} running, "
                 f"{counts.get('completed', 0)} completed, {counts.get('pruned', 0)} pruned, "
                 f"{counts.get('failed', 0)} failed)"]
        table = trials[["trial_id", "status", "runtime_s"]].copy()
        if not long.empty:
            last = long.sort_values("iteration").groupby("trial_id").last()["iteration"].rename("iteration")
            table = table.merge(last, left_on="trial_id", right_index=True, how="left")
            if columns:
                latest = long.sort_values("iteration").groupby(["trial_id", "metric"])["value"].last().unstack()
                cfgs = pd.json_normalize([json.loads(c) for c in trials["cfg"]])
                cfgs.index = trials["trial_id"]
                extra = pd.concat([cfgs, latest], axis=1)
                if isinstance(columns, list):
                    extra = extra[[c for c in columns if c in extra.columns]]
                table = table.merge(extra, left_on="trial_id", right_index=True, how="left")
        table = table.set_index("trial_id")
        if sort_by is not None:
            table = table.sort_values(sort_by, ascending=False)
        shown = table if n_rows is None else table.head(n_rows)
        lines.append(shown.to_string())
        if n_rows is not None and n_rows < len(table):
            lines.append(f"... {len(table) - n_rows} trials not displayed")
        print("\n".join(lines), file=self.stream, flush=True)

    def close(self) -> None:
        self.queue.close()
