"""The Ackley/GPR model exploration.

Sample points, evaluate each as an Ackley task; every ``retrain_after`` results fit a GP
surrogate (in the ME or as a ``gpr`` task on a pool, data and model passed by ProxyStore) and
reprioritize every queued point in one statement; add pools after given retrains. At
``num_guesses`` results the queued points are canceled and the pools stopped at once.

The fit runs in a background thread, so completions keep being counted while it runs and the
budget is enforced when it is reached, not when a fit ends. Re-running an existing exp_id
re-attaches and continues; re-running a finished one changes nothing. Outputs are drawn from
the database (``ackley_outputs``), never from this process's memory.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eqflow.config import WorkflowConfig
from eqflow.futures import Future
from eqflow.models import TaskStatus
from eqflow.workflows import gpr
from eqflow.workflows.runkit import PoolKeeper, Progress, make_launcher

log = logging.getLogger("eqflow.ackley")

BOUND = 32.768  # the usual Ackley domain: [-32.768, 32.768]^d
FINISHED = "finished"
PROGRESS_EVERY_S = 2.0  # how often the loop records a progress event


def sample_points(cfg: WorkflowConfig) -> np.ndarray:
    rng = np.random.default_rng(cfg.seed)
    return rng.uniform(-BOUND, BOUND, size=(cfg.search_space_size, cfg.sample_dimensions))


def sample_delays(cfg: WorkflowConfig) -> np.ndarray:
    """Heterogeneous runtimes: lognormal around ``runtime`` with sigma ``runtime_var``."""
    if cfg.runtime <= 0:
        return np.zeros(cfg.search_space_size)
    rng = np.random.default_rng(cfg.seed + 1)
    return rng.lognormal(np.log(cfg.runtime), cfg.runtime_var, size=cfg.search_space_size)


def value_of(result: str | None) -> float | None:
    return None if result is None else float(json.loads(result)["y"])


def public_config(cfg: WorkflowConfig) -> dict[str, Any]:
    """The config as recorded with the experiment: tokens and passwords left out."""
    import psycopg

    data = cfg.model_dump(mode="json")
    for entry in data.get("task_queues", {}).values():
        if entry.get("token"):
            entry["token"] = "***"
    for db in data.get("dbs", {}).values():
        if db.get("url"):
            try:
                parts = psycopg.conninfo.conninfo_to_dict(db["url"])
            except psycopg.ProgrammingError:
                parts = {}
            if parts.get("password"):
                db["url"] = db["url"].replace(str(parts["password"]), "***")
    return data


@dataclass
class Run:
    """What a run did, read back from the database: values in completion order."""

    exp_id: str
    values: dict[int, float] = field(default_factory=dict)  # point index -> value
    order: list[int] = field(default_factory=list)  # point indexes in completion order
    retrains: int = 0
    pools_started: int = 0
    best: float = float("inf")
    finished: bool = False

    def add(self, index: int, value: float) -> None:
        self.values[index] = value
        self.order.append(index)
        self.best = min(self.best, value)

    def best_after(self, n: int) -> float:
        return min((self.values[i] for i in self.order[:n]), default=float("inf"))


@dataclass
class _Fit:
    """A retrain under way in the background thread."""

    number: int
    points: int
    best: float
    job: ThreadFuture[Any]


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
        self.pools = PoolKeeper(queue, cfg, exp_id, self.out, self.executors)
        self._store: Any = None
        self._fitter = ThreadPoolExecutor(1, thread_name_prefix="eqflow-gp-fit")
        self._gpr_tasks: list[Future] = []  # retrains running as tasks (reprioritize_endpoint: pool)
        if reprioritize and cfg.reprioritize_endpoint == "local":
            import sklearn.gaussian_process  # noqa: F401 - a second to import: not in the first retrain

    # -- setup ------------------------------------------------------------------------------------
    def _submit_or_attach(self) -> list[Future]:
        attached = [f for f in self.queue.experiment_futures(self.exp_id) if f.task_type == self.ackley_type]
        if attached:
            log.info("re-attached", extra={"exp_id": self.exp_id, "tasks": len(attached)})
            return attached
        if hasattr(self.queue, "create_experiment"):
            self.queue.create_experiment(self.exp_id, public_config(self.cfg))
        delays = sample_delays(self.cfg)
        payloads = [json.dumps({"x": p.tolist(), "delay": float(d)}) for p, d in zip(self.points, delays, strict=True)]
        return self.queue.submit_many(self.exp_id, self.ackley_type, payloads,
                                      tag=[str(i) for i in range(len(payloads))],
                                      idempotency_key=f"{self.exp_id}/ackley")

    def _start_ackley_pool(self, reason: str, remaining: int) -> None:
        names = self.cfg.tasks["ackley"].pools
        config_name = names[min(self.pools.started_before(), len(names) - 1)]
        workers = self.cfg.pools[config_name].workers
        if remaining < workers:
            log.info("pool not started", extra={"pool": config_name, "reason": reason,
                                                "why": f"{remaining} evaluations left for {workers} workers"})
            return
        self.pools.start("ackley", config_name, reason=reason)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> Run:
        """Run (or resume) the exploration; returns what the database holds afterwards."""
        self.out.mkdir(parents=True, exist_ok=True)
        futures = self._submit_or_attach()
        if self.queue.experiment_status(self.exp_id) == FINISHED:
            log.info("already finished", extra={"exp_id": self.exp_id})
            return self.read_back(futures)
        index = {f.task_id: int(f.tag or 0) for f in futures}
        done: dict[int, float] = {index[f.task_id]: v for f in futures
                                  if f._status is TaskStatus.COMPLETE and (v := value_of(f._result)) is not None}
        target = min(self.cfg.num_guesses, len(futures))
        pending = {f.task_id: f for f in futures if not f._final}
        retrains = len(self.queue.events(self.exp_id, kind="retrain"))
        self.queue.record_event(self.exp_id, "session_started", {"done": len(done), "open": len(pending),
                                                                 "reprioritize": self.reprioritize})
        if len(done) < target and pending:
            self._start_session_pools(retrains, target - len(done))
            if self.reprioritize and self.cfg.reprioritize_endpoint == "pool":
                self._open_store()  # the gpr pool starts now, to be warm for the first retrain
        controller = self._controller() if self.dynamic else None
        bar = Progress(target, self.exp_id, enabled=self.progress, initial=min(len(done), target))
        fit: _Fit | None = None
        last_check = last_progress = 0.0
        watch = self.queue.watch_completions({self.exp_id}) if pending else None
        try:
            while pending and len(done) < target:
                rows = watch.finished(pending, 0.05 if fit else None) if watch else []
                self._collect(rows, pending, index, done)
                bar.update(min(len(done), target), best=f"{min(done.values(), default=float('nan')):.3f}",
                           pools=len(self.pools.jobs), retrains=retrains)
                if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                    self._progress(done, target, retrains)
                    last_progress = time.monotonic()
                if len(done) >= target:
                    break
                if fit is not None and fit.job.done():
                    retrains = self._apply(fit, pending, index, len(done), target)
                    fit = None
                if (fit is None and self.reprioritize
                        and len(done) >= (retrains + 1) * self.cfg.retrain_after):
                    fit = self._start_fit(retrains + 1, done)
                if controller is not None and time.monotonic() - last_check > self.cfg.scaling.check_interval:
                    controller.step()
                    last_check = time.monotonic()
        finally:
            if watch is not None:
                watch.close()
            bar.close()
            self._fitter.shutdown(wait=False, cancel_futures=True)
            self._progress(done, target, retrains)
            self._finish(controller, futures, reached=len(done) >= target or not pending)
        return self.read_back(futures)

    def _progress(self, done: dict[int, float], target: int, retrains: int) -> None:
        """The workflow's progress record for dashboards: one small event every few seconds."""
        best = min(done.values(), default=None)
        self.queue.record_event(self.exp_id, "progress", {
            "done": len(done), "target": target, "best": best, "retrains": retrains,
            "pools": len(self.pools.jobs)})

    def _start_session_pools(self, retrains: int, remaining: int) -> None:
        due = sum(1 for k in self.cfg.extra_pools_after_retrain if k <= retrains) if not self.dynamic else 0
        for _ in range(1 + due):  # a resumed run starts what the killed one had
            self._start_ackley_pool("start" if retrains == 0 else "resume", remaining)

    @staticmethod
    def _collect(rows: list[tuple[Any, ...]], pending: dict[int, Future], index: dict[int, int],
                 done: dict[int, float]) -> None:
        """Settle the futures that finished; record the values of those that completed."""
        for task_id, status, result, error, pool in rows:
            if (fut := pending.pop(task_id, None)) is not None:
                fut._settle(TaskStatus(status), result, error, pool)
                if fut._status is TaskStatus.COMPLETE and (value := value_of(result)) is not None:
                    done[index[task_id]] = value

    def _controller(self) -> Any:
        from eqflow.scaling import ScalingConfig, ScalingController, TypeScaling
        from eqflow.workers.launchers import PoolSpec

        pool = self.cfg.pools[self.cfg.tasks["ackley"].pools[0]]
        spec = PoolSpec([self.ackley_type], fn=pool.fn, cmd=pool.cmd, name=f"{self.exp_id}-auto",
                        workers=pool.workers, batch_size=pool.batch_size, db_url=getattr(self.queue, "url", None))
        s = self.cfg.scaling
        return ScalingController(self.queue, ScalingConfig(
            [TypeScaling(self.ackley_type, spec, min_pools=1, max_pools=s.max_pools, scale_up_queued=pool.workers,
                         launcher=make_launcher(pool, self.cfg, self.out, self.executors))],
            check_interval=s.check_interval, cpu_usage_threshold=s.cpu_usage_threshold,
            normalized_load_threshold=s.normalized_load_threshold, min_system_memory_gib=s.min_system_memory_gib))

    # -- retraining -------------------------------------------------------------------------------
    def _start_fit(self, number: int, done: dict[int, float]) -> _Fit:
        indexes = list(done)
        x, y = self.points[indexes], np.array([done[i] for i in indexes])
        log.debug("fit started", extra={"retrain": number, "points": len(indexes)})
        return _Fit(number, len(indexes), float(y.min()), self._fitter.submit(self._fit, x, y))

    def _apply(self, fit: _Fit, pending: dict[int, Future], index: dict[int, int], done: int, target: int) -> int:
        """Reprioritize what is still queued by the fitted model; returns the retrain count."""
        model = fit.job.result()
        open_ = list(pending.values())
        queued = [f for f, info in zip(open_, self.queue.info(open_).values(), strict=True)
                  if info.status is TaskStatus.QUEUED] if open_ else []
        prios: list[int] = []
        if queued:
            xq = self.points[[index[f.task_id] for f in queued]]
            prios = gpr.priorities(gpr.scores(model, xq, self.cfg.acquisition, fit.best))
            self.queue.set_priorities(queued, prios)  # one statement for every queued point
        self.queue.record_event(self.exp_id, "retrain", {
            "retrain": fit.number, "points": fit.points, "applied_at": done, "reprioritized": len(queued),
            "task_ids": [f.task_id for f in queued], "priorities": prios})
        log.info("retrained", extra={"retrain": fit.number, "points": fit.points, "reprioritized": len(queued)})
        if not self.dynamic and fit.number in self.cfg.extra_pools_after_retrain:
            self._start_ackley_pool(f"after retrain {fit.number}", target - done)
        return fit.number

    def _open_store(self) -> None:
        from eqflow.proxies import make_store

        self._store = make_store(**self._store_cfg())
        self.pools.start("gpr", self.cfg.tasks["gpr"].pools[0], reason="retrain on a pool")

    def _store_cfg(self) -> dict[str, Any]:
        ps = self.cfg.proxystore
        return {"kind": ps.type, "path": str(Path(ps.path).resolve()), "hostname": ps.hostname, "port": ps.port}

    def _fit(self, x: np.ndarray, y: np.ndarray) -> Any:
        if self.cfg.reprioritize_endpoint == "local":
            return gpr.fit(x, y, self.cfg.seed)
        from eqflow.proxies import from_text, to_text

        data = to_text(self._store.proxy((x.tolist(), y.tolist())))
        fut = self.queue.submit(self.exp_id, self.cfg.tasks["gpr"].type,
                                json.dumps({"data": data, "store": self._store_cfg(), "seed": self.cfg.seed}))
        self._gpr_tasks.append(fut)
        answer = json.loads(fut.result(timeout=600))
        return from_text(answer["model"])

    # -- the end ----------------------------------------------------------------------------------
    def _finish(self, controller: Any, futures: list[Future], reached: bool) -> None:
        """Budget reached (or nothing left): cancel what is queued at once, so no pool takes
        more, stop our pools (they give back what they hold), cancel that too, and mark the
        experiment finished. Otherwise (an error, Ctrl-C): stop the pools and leave the queue
        as it is, to resume later."""
        if reached:
            self._cancel_open(futures)
            self.queue.record_event(self.exp_id, "budget_reached", {"num_guesses": self.cfg.num_guesses})
        self._cancel_open(self._gpr_tasks)  # a retrain still under way is not needed any more
        if controller is not None:
            controller.shutdown()
        self.pools.stop_all()
        self._cancel_open(self._gpr_tasks)
        if reached:
            self._cancel_open(futures)
            self.queue.set_experiment_status(self.exp_id, FINISHED)
            self.queue.record_event(self.exp_id, FINISHED, {})

    def _cancel_open(self, futures: list[Future]) -> None:
        open_ = [f for f in futures if not f._final]
        if open_:
            canceled = self.queue.cancel(open_)
            for fut in open_:
                if fut.task_id in canceled:
                    fut._settle(TaskStatus.CANCELED, None, None, None)
            log.info("canceled queued tasks", extra={"exp_id": self.exp_id, "canceled": len(canceled)})

    def read_back(self, futures: list[Future]) -> Run:
        """The run as the database has it: every completed task, in completion order."""
        infos = self.queue.info(futures) if futures else {}
        run = Run(self.exp_id, finished=self.queue.experiment_status(self.exp_id) == FINISHED)
        complete = sorted((i for i in infos.values() if i.status is TaskStatus.COMPLETE),
                          key=lambda i: (i.finished_at, i.task_id))
        for info in complete:
            if (value := value_of(info.result)) is not None:
                run.add(int(info.tag or 0), value)
        events = self.queue.events(self.exp_id)
        run.retrains = sum(1 for e in events if e.kind == "retrain")
        run.pools_started = sum(1 for e in events if e.kind == "pool_started" and e.data.get("task") == "ackley")
        return run


def main() -> int:
    """``python -m eqflow.workflows.ackley_gpr <exp_id> <cfg>``: the same as ``eqflow run``."""
    from eqflow.workflows.main import main as run_main

    return run_main(prog="python -m eqflow.workflows.ackley_gpr")


if __name__ == "__main__":
    raise SystemExit(main())
