"""The Ackley/GPR model exploration.

Sample points, evaluate each as an Ackley task; every ``retrain_after`` results fit a GP
surrogate (in the ME or as a ``gpr`` task on a pool, data and model passed by ProxyStore) and
reprioritize every queued point in one statement; add pools after given retrains; stop after
``num_guesses`` results. Re-running an existing exp_id re-attaches and continues.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eqflow.config import PoolConfig, WorkflowConfig
from eqflow.futures import Future
from eqflow.models import TaskStatus
from eqflow.workers.launchers import (
    ExecutorLauncher,
    JobSpec,
    Launcher,
    LocalLauncher,
    PbsLauncher,
    PoolSpec,
    SlurmLauncher,
)
from eqflow.workflows import gpr

log = logging.getLogger("eqflow.ackley")

BOUND = 32.768  # the usual Ackley domain: [-32.768, 32.768]^d


def sample_points(cfg: WorkflowConfig) -> np.ndarray:
    rng = np.random.default_rng(cfg.seed)
    return rng.uniform(-BOUND, BOUND, size=(cfg.search_space_size, cfg.sample_dimensions))


def sample_delays(cfg: WorkflowConfig) -> np.ndarray:
    """Heterogeneous runtimes: lognormal around ``runtime`` with sigma ``runtime_var``."""
    if cfg.runtime <= 0:
        return np.zeros(cfg.search_space_size)
    rng = np.random.default_rng(cfg.seed + 1)
    return rng.lognormal(np.log(cfg.runtime), cfg.runtime_var, size=cfg.search_space_size)


def make_launcher(pool: PoolConfig, cfg: WorkflowConfig, out: Path, executors: dict[str, Any]) -> Launcher:
    job = JobSpec(nodes=pool.nodes, ppn=pool.ppn, walltime=pool.walltime, queue=pool.queue, project=pool.project,
                  output_dir=str(out / "jobs"), setup=pool.setup)
    if pool.type == "local":
        return LocalLauncher(log_dir=str(out / "pool-logs"))
    if pool.type == "slurm":
        return SlurmLauncher(job)
    if pool.type == "pbs":
        return PbsLauncher(job)
    executor = executors.get(pool.gc_endpoint or "")
    if executor is None:
        endpoint = cfg.gc_endpoints.get(pool.gc_endpoint or "")
        if endpoint is None:
            raise ValueError(f"pool needs gc_endpoint naming an entry of gc_endpoints, got {pool.gc_endpoint!r}")
        from globus_compute_sdk import Executor  # type: ignore[import-not-found]

        executor = executors[pool.gc_endpoint or ""] = Executor(endpoint_id=endpoint)
    return ExecutorLauncher(executor, pool.remote_launcher, job)


@dataclass
class Run:
    """What a run did: per-task records, the trace over time, and its summary."""

    exp_id: str
    values: dict[int, float] = field(default_factory=dict)  # point index -> value
    order: list[int] = field(default_factory=list)  # point indexes in completion order
    priority_history: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    trace: list[dict[str, float]] = field(default_factory=list)  # time, done, queued, pools, best
    retrains: int = 0
    pools_started: int = 0
    best: float = float("inf")

    def add(self, index: int, value: float) -> None:
        """Record one result (kept incrementally: this runs once per completion)."""
        self.values[index] = value
        self.order.append(index)
        self.best = min(self.best, value)

    def best_after(self, n: int) -> float:
        return min((self.values[i] for i in self.order[:n]), default=float("inf"))


class AckleyGPR:
    def __init__(self, cfg: WorkflowConfig, exp_id: str, queue: Any, *, reprioritize: bool = True,
                 dynamic_scaling: bool | None = None, progress: bool = True,
                 executors: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.exp_id = exp_id
        self.queue = queue
        self.reprioritize = reprioritize
        self.dynamic = cfg.scaling.dynamic if dynamic_scaling is None else dynamic_scaling
        self.progress = progress
        self.out = Path(cfg.output_dir) / exp_id
        self.executors = executors or {}
        self.points = sample_points(cfg)
        self.ackley_type = cfg.tasks["ackley"].type
        self.jobs: list[tuple[Launcher, str]] = []
        self.run_record = Run(exp_id)
        self._store: Any = None
        if reprioritize and cfg.reprioritize_endpoint == "local":
            import sklearn.gaussian_process  # noqa: F401 - a second to import: not in the first retrain

    # -- setup ------------------------------------------------------------------------------------
    def _submit_or_attach(self) -> list[Future]:
        attached = [f for f in self.queue.experiment_futures(self.exp_id) if f.task_type == self.ackley_type]
        if attached:
            log.info("re-attached", extra={"exp_id": self.exp_id, "tasks": len(attached)})
            return attached
        if hasattr(self.queue, "create_experiment"):
            self.queue.create_experiment(self.exp_id, self.cfg.model_dump())
        delays = sample_delays(self.cfg)
        payloads = [json.dumps({"x": p.tolist(), "delay": float(d)}) for p, d in zip(self.points, delays, strict=True)]
        return self.queue.submit_many(self.exp_id, self.ackley_type, payloads,
                                      tag=[str(i) for i in range(len(payloads))],
                                      idempotency_key=f"{self.exp_id}/ackley")

    def _start_pool(self, task: str) -> None:
        name = self.cfg.tasks[task].pools[min(self.run_record.pools_started, len(self.cfg.tasks[task].pools) - 1)]
        pool = self.cfg.pools[name]
        launcher = make_launcher(pool, self.cfg, self.out, self.executors)
        spec = PoolSpec([self.cfg.tasks[task].type], fn=pool.fn, cmd=pool.cmd, name=f"{self.exp_id}-{name}",
                        workers=pool.workers, batch_size=pool.batch_size, threshold=pool.threshold,
                        idle_exit=pool.idle_exit,
                        db_url=getattr(self.queue, "url", None) if pool.type == "local" else None)
        job = launcher.start(spec)
        self.jobs.append((launcher, job))
        if task == "ackley":
            self.run_record.pools_started += 1
        log.info("pool started", extra={"pool": name, "job_id": job, "task": task})

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> Run:
        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        futures = self._submit_or_attach()
        record = self.run_record
        by_id = {f.task_id: f for f in futures}
        index = {f.task_id: int(f.tag or 0) for f in futures}
        for fut in futures:  # results from before a restart count
            if fut._status is TaskStatus.COMPLETE and fut._result:
                record.add(index[fut.task_id], json.loads(fut._result)["y"])
        done_before = len(record.values)
        record.retrains = done_before // self.cfg.retrain_after if self.reprioritize else 0
        pending = [f for f in futures if not f._final]
        target = min(self.cfg.num_guesses, len(futures))
        extra = sum(1 for k in self.cfg.extra_pools_after_retrain if k <= record.retrains) if self.reprioritize else 0
        for _ in range(1 + (0 if self.dynamic else extra)):
            if pending and len(record.values) < target:
                self._start_pool("ackley")
        controller = self._controller() if self.dynamic else None
        t0 = time.monotonic()
        last_check = 0.0
        open_tasks = len(pending)
        bar = tqdm(total=target, initial=min(done_before, target), desc=self.exp_id, unit="task",
                   disable=not self.progress)
        try:
            for fut in self.queue.as_completed(pending, timeout=None):
                open_tasks -= 1
                if fut.status is TaskStatus.COMPLETE:
                    record.add(index[fut.task_id], json.loads(fut.result())["y"])
                    bar.update()
                if controller is not None and time.monotonic() - last_check > self.cfg.scaling.check_interval:
                    controller.step()
                    last_check = time.monotonic()
                record.trace.append({"t": time.monotonic() - t0, "done": len(record.values),
                                     "open": open_tasks,
                                     "pools": record.pools_started, "best": record.best})
                bar.set_postfix(best=f"{record.best:.3f}", pools=record.pools_started, retrains=record.retrains)
                if len(record.values) >= target:
                    break
                if self.reprioritize and len(record.values) >= (record.retrains + 1) * self.cfg.retrain_after:
                    self._retrain(by_id, index)
        finally:
            bar.close()
            self._finish(controller, futures)
        self._write_outputs(futures, index)
        return record

    def _controller(self) -> Any:
        from eqflow.scaling import ScalingConfig, ScalingController, TypeScaling

        pool = self.cfg.pools[self.cfg.tasks["ackley"].pools[0]]
        spec = PoolSpec([self.ackley_type], fn=pool.fn, cmd=pool.cmd, name=f"{self.exp_id}-auto",
                        workers=pool.workers, batch_size=pool.batch_size, db_url=getattr(self.queue, "url", None))
        s = self.cfg.scaling
        return ScalingController(self.queue, ScalingConfig(
            [TypeScaling(self.ackley_type, spec, min_pools=1, max_pools=s.max_pools, scale_up_queued=pool.workers,
                         launcher=make_launcher(pool, self.cfg, self.out, self.executors))],
            check_interval=s.check_interval, cpu_usage_threshold=s.cpu_usage_threshold,
            normalized_load_threshold=s.normalized_load_threshold, min_system_memory_gib=s.min_system_memory_gib))

    def _retrain(self, by_id: dict[int, Future], index: dict[int, int]) -> None:
        record = self.run_record
        done = list(record.values)
        x, y = self.points[done], np.array([record.values[i] for i in done])
        queued = [f for f in by_id.values() if not f._final]
        queued = [f for f, info in zip(queued, self.queue.info(queued).values(), strict=True)
                  if info.status is TaskStatus.QUEUED] if queued else []
        model = self._fit(x, y)
        record.retrains += 1
        if queued:
            xq = self.points[[index[f.task_id] for f in queued]]
            prios = gpr.priorities(gpr.scores(model, xq, self.cfg.acquisition, float(y.min())))
            self.queue.set_priorities(queued, prios)  # one statement for every queued point
            for f, p in zip(queued, prios, strict=True):
                record.priority_history.setdefault(index[f.task_id], []).append((record.retrains, p))
        log.info("retrained", extra={"retrain": record.retrains, "points": len(done), "reprioritized": len(queued)})
        if not self.dynamic and record.retrains in self.cfg.extra_pools_after_retrain:
            self._start_pool("ackley")

    def _fit(self, x: np.ndarray, y: np.ndarray) -> Any:
        if self.cfg.reprioritize_endpoint == "local":
            return gpr.fit(x, y, self.cfg.seed)
        from eqflow.proxies import from_text, make_store, to_text

        ps = self.cfg.proxystore
        store_cfg: dict[str, Any] = {"kind": ps.type, "path": str(Path(ps.path).resolve()),
                                     "hostname": ps.hostname, "port": ps.port}
        if self._store is None:
            self._store = make_store(**store_cfg)
            self._start_pool("gpr")
        data = to_text(self._store.proxy((x.tolist(), y.tolist())))
        fut = self.queue.submit(self.exp_id, self.cfg.tasks["gpr"].type,
                                json.dumps({"data": data, "store": store_cfg, "seed": self.cfg.seed}))
        answer = json.loads(fut.result(timeout=600))
        return from_text(answer["model"])

    def _finish(self, controller: Any, futures: list[Future]) -> None:
        """At num_guesses: cancel what is still queued (so pools take no more), stop our pools
        (they give back what they hold), and cancel that too. Otherwise (an error, Ctrl-C):
        stop the pools and leave the queue as it is, to resume later."""
        finished = len(self.run_record.values) >= min(self.cfg.num_guesses, len(futures))
        if finished:
            self._cancel_open(futures)
        if controller is not None:
            controller.shutdown()
        for launcher, job in self.jobs:
            launcher.cancel(job)
        deadline = time.monotonic() + 30
        for launcher, job in self.jobs:
            while not launcher.status(job).finished and time.monotonic() < deadline:
                time.sleep(0.1)
        if finished:
            self._cancel_open(futures)

    def _cancel_open(self, futures: list[Future]) -> None:
        open_ = [f for f in futures if not f._final]
        if open_:
            self.queue.cancel(open_)

    # -- outputs -----------------------------------------------------------------------------------
    def _write_outputs(self, futures: list[Future], index: dict[int, int]) -> None:
        infos = self.queue.info(futures)
        with open(self.out / "tasks.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            dims = [f"x{d}" for d in range(self.cfg.sample_dimensions)]
            writer.writerow(["task_id", "point", *dims, "value", "status", "pool", "priority",
                             "priority_history", "created_at", "started_at", "finished_at"])
            for fut in futures:
                info = infos[fut.task_id]
                i = index[fut.task_id]
                writer.writerow([fut.task_id, i, *self.points[i].tolist(), self.run_record.values.get(i, ""),
                                 info.status.value, info.pool or "", info.priority,
                                 json.dumps(self.run_record.priority_history.get(i, [])),
                                 info.created_at.isoformat(), info.started_at.isoformat() if info.started_at else "",
                                 info.finished_at.isoformat() if info.finished_at else ""])
        summary = {"exp_id": self.exp_id, "evaluated": len(self.run_record.values), "best": self.run_record.best,
                   "retrains": self.run_record.retrains, "pools_started": self.run_record.pools_started,
                   "reprioritized": self.reprioritize}
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
