"""The Ackley/GPR run's outputs, drawn from the database alone.

tasks.csv, summary.json, best_so_far.png and queue_and_pools.png come from the tasks (their
results and timestamps), the experiment's event log and the pools table. Drawing them twice
from an unchanged database gives the same files, so a re-run, a resumed run or a run whose
ME was killed all report what really happened.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from eqflow.config import WorkflowConfig
from eqflow.models import ExperimentEvent, PoolInfo, TaskInfo, TaskStatus
from eqflow.workflows import plots
from eqflow.workflows.ackley_gpr import FINISHED, sample_points, value_of
from eqflow.workflows.runkit import write_json, write_text_atomic

FRACTIONS = (0.10, 0.25, 0.50)


@dataclass
class ExperimentRecord:
    """One experiment as the database holds it."""

    exp_id: str
    status: str | None
    tasks: list[TaskInfo]  # the Ackley tasks, in submission order
    events: list[ExperimentEvent]
    pools: list[PoolInfo]  # the pools this experiment started

    @property
    def completed(self) -> list[TaskInfo]:
        """Completed tasks in completion order."""
        done = [t for t in self.tasks if t.status is TaskStatus.COMPLETE]
        return sorted(done, key=lambda t: (t.finished_at, t.task_id))

    def values_in_order(self) -> list[float]:
        return [v for t in self.completed if (v := value_of(t.result)) is not None]

    def of_kind(self, kind: str) -> list[ExperimentEvent]:
        return [e for e in self.events if e.kind == kind]


def read_experiment(queue: Any, cfg: WorkflowConfig, exp_id: str) -> ExperimentRecord:
    ackley = cfg.tasks["ackley"].type
    futures = [f for f in queue.experiment_futures(exp_id) if f.task_type == ackley]
    infos = queue.info(futures) if futures else {}
    events = queue.events(exp_id)
    names = {e.data.get("pool") for e in events if e.kind == "pool_started"} | {f"{exp_id}-auto"}
    pools = [p for p in queue.pools() if p.name in names]
    return ExperimentRecord(exp_id, queue.experiment_status(exp_id), [infos[f.task_id] for f in futures],
                            events, pools)


def summarize(record: ExperimentRecord, cfg: WorkflowConfig) -> dict[str, Any]:
    by_status = {s.value: 0 for s in TaskStatus}
    for task in record.tasks:
        by_status[task.status.value] += 1
    values = record.values_in_order()
    best_at = int(np.argmin(values)) if values else None
    best_task = record.completed[best_at] if best_at is not None else None
    sessions = record.of_kind("session_started")
    created = min((t.created_at for t in record.tasks), default=None)
    finished = max((t.finished_at for t in record.tasks if t.finished_at), default=None)
    return {
        "exp_id": record.exp_id,
        "status": record.status or "unknown",
        "reprioritized": bool(sessions and sessions[0].data.get("reprioritize", True)),
        "points": len(record.tasks),
        "num_guesses": cfg.num_guesses,
        "evaluated": by_status["complete"],
        "over_budget": max(0, by_status["complete"] - cfg.num_guesses),
        "failed": by_status["failed"],
        "canceled": by_status["canceled"],
        "still_open": by_status["queued"] + by_status["running"],
        "best": min(values) if values else None,
        "best_point": int(best_task.tag or 0) if best_task else None,
        "evaluations_to_best": None if best_at is None else best_at + 1,
        "best_after": {f"{int(f * 100)}%": min(values[:max(1, int(f * cfg.num_guesses))])
                       for f in FRACTIONS if values},
        "retrains": len(record.of_kind("retrain")),
        "pools_started": sum(1 for e in record.of_kind("pool_started") if e.data.get("task") == "ackley"),
        "pools_that_ran_tasks": len({t.pool for t in record.tasks if t.pool and t.status is TaskStatus.COMPLETE}),
        "sessions": len(sessions),
        "started_at": created.isoformat() if created else None,
        "finished_at": finished.isoformat() if finished else None,
        "wall_s": round((finished - created).total_seconds(), 3) if created and finished else None,
    }


def _priority_history(record: ExperimentRecord) -> dict[int, list[tuple[int, int]]]:
    history: dict[int, list[tuple[int, int]]] = {}
    for event in record.of_kind("retrain"):
        for task_id, prio in zip(event.data.get("task_ids", []), event.data.get("priorities", []), strict=False):
            history.setdefault(task_id, []).append((event.data["retrain"], prio))
    return history


def tasks_csv(record: ExperimentRecord, cfg: WorkflowConfig) -> str:
    points = sample_points(cfg)
    history = _priority_history(record)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    dims = [f"x{d}" for d in range(cfg.sample_dimensions)]
    writer.writerow(["task_id", "point", *dims, "value", "status", "pool", "priority", "attempts",
                     "priority_history", "created_at", "started_at", "finished_at"])
    for t in record.tasks:
        i = int(t.tag or 0)
        value = value_of(t.result) if t.status is TaskStatus.COMPLETE else None
        writer.writerow([t.task_id, i, *points[i].tolist(), "" if value is None else value, t.status.value,
                         t.pool or "", t.priority, t.attempts, json.dumps(history.get(t.task_id, [])),
                         _iso(t.created_at), _iso(t.started_at), _iso(t.finished_at)])
    return buffer.getvalue()


def _iso(at: datetime | None) -> str:
    return at.isoformat() if at else ""


def queue_trace(record: ExperimentRecord) -> plots.QueueTrace:
    """Queued, running and pools over time, from the tasks' and pools' own timestamps."""
    t0 = min(t.created_at for t in record.tasks)

    def secs(at: datetime) -> float:
        return (at - t0).total_seconds()

    steps: list[tuple[float, int, int]] = []  # time, change in queued, change in running
    for t in record.tasks:
        steps.append((secs(t.created_at), 1, 0))
        if t.started_at is not None and (t.finished_at is None or t.started_at <= t.finished_at):
            steps.append((secs(t.started_at), -1, 1))
            if t.finished_at is not None:
                steps.append((secs(t.finished_at), 0, -1))
        elif t.finished_at is not None:  # canceled while queued
            steps.append((secs(t.finished_at), -1, 0))
    steps.sort(key=lambda s: s[0])
    times, queued, running = [0.0], [0], [0]
    for at, dq, dr in steps:
        times.append(at)
        queued.append(queued[-1] + dq)
        running.append(running[-1] + dr)
    pool_steps = sorted([(secs(p.started_at), 1) for p in record.pools]
                        + [(secs(p.stopped_at or p.heartbeat_at), -1) for p in record.pools])
    pool_times, pool_counts = [0.0], [0]
    for at, change in pool_steps:
        pool_times.append(at)
        pool_counts.append(pool_counts[-1] + change)
    retrains = [secs(e.at) for e in record.of_kind("retrain")]
    return plots.QueueTrace(times, queued, running, pool_times, pool_counts, retrains)


def write_outputs(queue: Any, cfg: WorkflowConfig, exp_id: str, out: Path,
                  baseline: str | None = None) -> dict[str, Any]:
    """Write tasks.csv, summary.json and the plots for ``exp_id`` (beside a FIFO baseline
    experiment, when one exists in the database); returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    record = read_experiment(queue, cfg, exp_id)
    summary = summarize(record, cfg)
    if baseline and queue.experiment_status(baseline) is not None:
        fifo = read_experiment(queue, cfg, baseline)
        summary["baseline"] = {k: v for k, v in summarize(fifo, cfg).items()
                               if k in ("exp_id", "status", "evaluated", "best", "evaluations_to_best", "best_after")}
    write_text_atomic(out / "tasks.csv", tasks_csv(record, cfg))
    write_json(out / "summary.json", summary)
    curves = {"reprioritized" if summary["reprioritized"] else "FIFO": record.values_in_order()}
    if "baseline" in summary:
        curves["FIFO"] = fifo.values_in_order()
    marks = [int(e.data.get("applied_at", 0)) for e in record.of_kind("retrain")]
    plots.plot_best(out, curves, retrain_marks=marks)
    if record.tasks:
        plots.plot_queue(out, queue_trace(record))
        write_timelines(record, out)
    return summary


def write_timelines(record: ExperimentRecord, out: Path) -> list[Path]:
    """timeline-<pool>.png: a Gantt chart per pool that ran tasks, from the tasks' timestamps."""
    t0 = min(t.created_at for t in record.tasks)
    by_pool: dict[str, list[tuple[float, float, str]]] = {}
    for t in record.tasks:
        if t.pool and t.started_at is not None and t.finished_at is not None:
            by_pool.setdefault(t.pool, []).append(((t.started_at - t0).total_seconds(),
                                                   (t.finished_at - t0).total_seconds(), t.status.value))
    retrains = [(e.at - t0).total_seconds() for e in record.of_kind("retrain")]
    for old in out.glob("timeline-*.png"):
        old.unlink()
    return [plots.plot_pool_timeline(out / f"timeline-{_file_safe(pool)}.png", pool, tasks, retrains)
            for pool, tasks in sorted(by_pool.items())]


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def is_finished(queue: Any, exp_id: str) -> bool:
    return bool(queue.experiment_status(exp_id) == FINISHED)
