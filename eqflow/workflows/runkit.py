"""What every workflow needs around its algorithm: a progress display, pools started from the
config and recorded in the experiment's event log, and output files written atomically.

Workflows keep no bookkeeping of their own that outputs depend on: what happened is in the
database (tasks with their timestamps, the event log), so outputs can be drawn again from it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eqflow.config import PoolConfig, WorkflowConfig
from eqflow.globus import globus_executor
from eqflow.workers.launchers import (
    ExecutorLauncher,
    JobSpec,
    Launcher,
    LocalLauncher,
    PbsLauncher,
    PoolSpec,
    SlurmLauncher,
)

log = logging.getLogger("eqflow.run")


# -- progress -------------------------------------------------------------------------------------
class Progress:
    """A progress bar on a terminal; elsewhere (a log file, CI, a batch job) one status line
    every ``interval`` seconds and one at the end, instead of hundreds of bar redraws."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, initial: int = 0,
                 interval: float = 10.0, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.desc, self.n = total, desc, initial
        self.interval = interval
        self.fields: dict[str, Any] = {}
        self.enabled = enabled
        self.started = time.monotonic()
        self._last_line = self.started
        self.bar: Any = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="task", file=self.stream)

    def update(self, done: int, **fields: Any) -> None:
        self.fields.update(fields)
        if self.bar is not None:
            self.bar.update(done - self.n)
            self.bar.set_postfix(self.fields, refresh=False)
        self.n = done
        if self.bar is None and self.enabled and time.monotonic() - self._last_line >= self.interval:
            self._line()

    def _line(self) -> None:
        self._last_line = time.monotonic()
        shown = " ".join(f"{k}={v}" for k, v in self.fields.items())
        print(f"[{self.desc}] {self.n}/{self.total} done, {self._last_line - self.started:.0f}s {shown}".rstrip(),
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line()


# -- pools ----------------------------------------------------------------------------------------
def make_launcher(pool: PoolConfig, cfg: WorkflowConfig, out: Path, executors: dict[str, Any]) -> Launcher:
    """The launcher a ``pools:`` entry names; Globus Compute executors are made once per endpoint."""
    job = JobSpec(nodes=pool.nodes, ppn=pool.ppn, walltime=pool.walltime, queue=pool.queue, project=pool.project,
                  output_dir=str(out / "jobs"), setup=pool.setup)
    if pool.type == "local":
        return LocalLauncher(log_dir=str(out / "pool-logs"))
    if pool.type == "slurm":
        return SlurmLauncher(job)
    if pool.type == "pbs":
        return PbsLauncher(job)
    endpoint_name = pool.gc_endpoint or ""
    executor = executors.get(endpoint_name)
    if executor is None:
        endpoint = cfg.gc_endpoints.get(endpoint_name)
        if endpoint is None:
            raise ValueError(f"pool needs gc_endpoint naming an entry of gc_endpoints, got {pool.gc_endpoint!r}")
        executor = executors[endpoint_name] = globus_executor(endpoint)
    return ExecutorLauncher(executor, pool.remote_launcher, job)


@dataclass
class PoolKeeper:
    """Starts an experiment's pools from the config, names each uniquely, records every start
    and stop in the event log, and stops them all at the end."""

    queue: Any
    cfg: WorkflowConfig
    exp_id: str
    out: Path
    executors: dict[str, Any] = field(default_factory=dict)
    jobs: list[tuple[Launcher, str, str]] = field(default_factory=list)  # launcher, job id, pool name

    def started_before(self) -> int:
        return len(self.queue.events(self.exp_id, kind="pool_started"))

    def start(self, task: str, config_name: str, *, reason: str) -> str:
        pool = self.cfg.pools[config_name]
        name = f"{self.exp_id}-{config_name}-{self.started_before() + 1}"
        spec = PoolSpec([self.cfg.tasks[task].type], fn=pool.fn, cmd=pool.cmd, name=name,
                        workers=pool.workers, batch_size=pool.batch_size, threshold=pool.threshold,
                        threads=pool.threads, idle_exit=pool.idle_exit,
                        db_url=getattr(self.queue, "url", None) if pool.type == "local" else None)
        launcher = make_launcher(pool, self.cfg, self.out, self.executors)
        job = launcher.start(spec)
        self.jobs.append((launcher, job, name))
        self.queue.record_event(self.exp_id, "pool_started", {
            "pool": name, "config": config_name, "task": task, "launcher": pool.type, "job_id": job,
            "workers": pool.workers, "reason": reason})
        log.info("pool started", extra={"pool": name, "launcher": pool.type, "job_id": job, "reason": reason})
        return name

    def stop_all(self, wait_s: float = 30.0) -> None:
        """Stop our pools (they give back what they hold) and wait for them to go."""
        for launcher, job, _ in self.jobs:
            launcher.cancel(job)
        deadline = time.monotonic() + wait_s
        for launcher, job, name in self.jobs:
            while not launcher.status(job).finished and time.monotonic() < deadline:
                time.sleep(0.1)
            self.queue.record_event(self.exp_id, "pool_stopped", {"pool": name, "job_id": job})
        self.jobs.clear()


# -- outputs --------------------------------------------------------------------------------------
def write_text_atomic(path: Path, text: str) -> None:
    """Readers (and a crash half-way) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
