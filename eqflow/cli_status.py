"""`eqflow status [--exp X] [--watch] [--url DB]`: the queue, pools, scaling decisions,
experiments' progress and recent failures in a terminal (rich).

Read-only: it never creates or migrates a database. The figures over all experiments come from
the metric tables kept by migration 0007's triggers (the same O(1) reads as /metrics); with
--exp, the experiment's task counts are counted over its own rows (tasks_exp_idx).
--watch redraws in place every --interval seconds until Ctrl-C; without a terminal it prints once.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from eqflow.errors import EqflowError
from eqflow.metrics import STATES, Figures, read_figures

N_POOLS = 50
N_DECISIONS = 5
N_FAILURES = 5
N_EXPERIMENTS = 10
ERROR_CHARS = 160


@dataclass
class Snapshot:
    exp_id: str | None
    at: float = field(default_factory=time.time)
    tasks: dict[int, dict[str, int]] = field(default_factory=dict)
    figures: Figures = field(default_factory=Figures)
    pools: list[tuple[Any, ...]] = field(default_factory=list)
    decisions: list[tuple[Any, ...]] = field(default_factory=list)
    experiments: list[tuple[Any, ...]] = field(default_factory=list)
    failures: list[tuple[Any, ...]] = field(default_factory=list)


def take_snapshot(queue: Any, exp_id: str | None) -> Snapshot:
    """Every figure `eqflow status` shows, read from the database (a handful of bounded queries)."""
    snap = Snapshot(exp_id)
    db = queue.db
    with db.connection() as conn:
        snap.figures = read_figures(conn)
    if exp_id is None:
        snap.tasks = snap.figures.tasks
    else:
        for task_type, status, count in db.fetch_all("status_experiment_tasks", {"exp_id": exp_id}):
            snap.tasks.setdefault(task_type, {})[status] = int(count)
    snap.pools = db.fetch_all("status_pools", {"limit": N_POOLS})
    snap.decisions = db.fetch_all("recent_decisions", {"limit": N_DECISIONS})
    snap.experiments = db.fetch_all("status_experiments", {"exp_id": exp_id, "limit": N_EXPERIMENTS})
    snap.failures = db.fetch_all("status_failures", {"exp_id": exp_id, "limit": N_FAILURES,
                                                     "max_chars": ERROR_CHARS})
    return snap


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _when(at: datetime | None, now: float) -> str:
    return "-" if at is None else _age(max(0.0, now - at.timestamp())) + " ago"


def _tasks_table(snap: Snapshot) -> Table:
    scope = f"experiment {snap.exp_id}" if snap.exp_id else "all experiments"
    table = Table(title=f"Tasks ({scope})", title_justify="left")
    table.add_column("type", justify="right")
    for state in STATES:
        table.add_column(state, justify="right")
    table.add_column("done/min (all exps)", justify="right")
    for task_type in sorted(set(snap.tasks) | set(snap.figures.throughput_1m)):
        by_state = snap.tasks.get(task_type, {})
        table.add_row(str(task_type), *(str(by_state.get(s, 0)) for s in STATES),
                      str(snap.figures.throughput_1m.get(task_type, 0)))
    if not table.rows:
        table.add_row("-", *("0" for _ in STATES), "0")
    return table


def _pools_table(snap: Snapshot) -> Table:
    fig = snap.figures
    table = Table(title=f"Pools ({fig.pools_alive} alive of {fig.pools_live} starting or running)",
                  title_justify="left")
    for name in ("pool", "host", "types", "workers", "heartbeat", "state"):
        table.add_column(name, justify="right" if name in ("workers", "heartbeat") else "left")
    for name, host, workers, status, stop, types, beat_age in snap.pools:
        state = f"{status}, stopping ({stop})" if stop else status
        table.add_row(name, host or "-", ",".join(map(str, types)), str(workers), _age(beat_age), state)
    return table


def _experiments_table(snap: Snapshot) -> Table:
    table = Table(title="Experiments (newest progress event)", title_justify="left")
    for name in ("experiment", "status", "done", "target", "best", "retrains", "pools", "updated"):
        table.add_column(name, justify="left" if name in ("experiment", "status") else "right")
    for exp_id, status, at, data in snap.experiments:
        data = data or {}
        best = data.get("best")
        table.add_row(exp_id, status, *(str(data.get(k, "-")) for k in ("done", "target")),
                      f"{best:.6g}" if isinstance(best, (int, float)) else "-",
                      *(str(data.get(k, "-")) for k in ("retrains", "pools")), _when(at, snap.at))
    return table


def _decisions_table(snap: Snapshot) -> Table:
    table = Table(title="Recent scaling decisions", title_justify="left")
    for name in ("when", "type", "action", "queued", "pools", "reason"):
        table.add_column(name)
    for at, task_type, action, reason, queued, pools, _job in snap.decisions:
        table.add_row(_when(at, snap.at), str(task_type), action, str(queued), str(pools), reason)
    return table


def _failures_table(snap: Snapshot) -> Table:
    table = Table(title="Recent failed runs", title_justify="left")
    for name in ("when", "task", "experiment", "type", "outcome", "error"):
        table.add_column(name)
    for at, task_id, exp_id, task_type, final, error in snap.failures:
        table.add_row(_when(at, snap.at), str(task_id), exp_id, str(task_type),
                      "failed" if final else "requeued", (error or "").replace("\n", " "))
    return table


def render(snap: Snapshot, where: str) -> RenderableType:
    stamp = datetime.fromtimestamp(snap.at).strftime("%Y-%m-%d %H:%M:%S")
    parts: list[RenderableType] = [Text(f"eqflow status  {where}  {stamp}", style="bold"), _tasks_table(snap),
                                   _pools_table(snap), _experiments_table(snap)]
    if snap.decisions:
        parts.append(_decisions_table(snap))
    if snap.failures:
        parts.append(_failures_table(snap))
    return Group(*parts)


def add_parser(sub: Any) -> None:
    status = sub.add_parser("status", help="queue, pools, experiments and failures at a glance (read-only)")
    status.add_argument("--exp", default=None, help="one experiment's tasks, progress and failures")
    status.add_argument("--watch", action="store_true", help="redraw in place until Ctrl-C (with a terminal)")
    status.add_argument("--interval", type=float, default=2.0, help="--watch: seconds between redraws")
    status.add_argument("--url", default=None, help="database URL (default: $EQFLOW_DB_URL or embedded)")
    status.set_defaults(func=main)


def _where(url: str) -> str:
    """host:port/dbname, never the password."""
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(url)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def main(args: argparse.Namespace) -> int:
    from eqflow import validate
    from eqflow.queue import LocalTaskQueue

    exp_id = None if args.exp is None else validate.exp_id(args.exp)
    interval = validate.seconds(args.interval, "--interval", 3600.0)
    terminal = sys.stdout.isatty()
    console = Console() if terminal else Console(width=200, color_system=None)
    # Read-only: no database created, no schema migrated; an outage is reported, not waited out.
    with LocalTaskQueue(args.url, create_db=False, migrate=False, reconnect_timeout=10.0, pool_size=1) as queue:
        where = _where(queue.url)
        if not (args.watch and terminal):
            console.print(render(take_snapshot(queue, exp_id), where))
            return 0
        try:
            with Live(render(take_snapshot(queue, exp_id), where), console=console, auto_refresh=False,
                      screen=False) as live:
                while True:
                    time.sleep(interval)
                    try:
                        view: RenderableType = render(take_snapshot(queue, exp_id), where)
                    except EqflowError as exc:  # the database went away: say so, keep watching
                        view = Text(f"eqflow status  {where}: {exc}", style="bold red")
                    live.update(view, refresh=True)
        except KeyboardInterrupt:
            return 0
