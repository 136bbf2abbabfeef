"""The scaling controller: starts and stops pools per task type from queue depth and free
resources, within min/max counts per type. Every decision is logged with its reason and kept
in ``scaling_decisions`` (shown by ``eqflow pool list``)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from eqflow.models import StopMode
from eqflow.queue import LocalTaskQueue
from eqflow.resources import GpuState, ResourceProbe
from eqflow.workers.launchers import Launcher, LocalLauncher, PoolSpec

log = logging.getLogger("eqflow.scaling")


@dataclass
class TypeScaling:
    """How one task type scales. ``pool`` is the pool to start (its task_types are set here)."""

    task_type: int
    pool: PoolSpec
    min_pools: int = 0
    max_pools: int = 4
    scale_up_queued: int = 1  # start a pool while more than this many tasks are queued
    gpu: bool = False
    min_gpu_memory_gib: float = 4.0
    max_gpu_utilization: float = 80.0
    launcher: Launcher = field(default_factory=LocalLauncher)

    def __post_init__(self) -> None:
        if not 0 <= self.min_pools <= self.max_pools:
            raise ValueError(f"type {self.task_type}: need 0 <= min_pools <= max_pools")
        self.pool.task_types = [self.task_type]


@dataclass
class ScalingConfig:
    types: list[TypeScaling]
    check_interval: float = 5.0
    cpu_usage_threshold: float = 90.0  # percent, smoothed
    normalized_load_threshold: float = 1.5  # 1-minute load average per core
    min_system_memory_gib: float = 1.0


@dataclass
class Decision:
    task_type: int
    action: str  # start | stop | hold
    reason: str
    queued: int
    pools: int
    job_id: str | None = None


@dataclass
class _Launched:
    job_id: str
    launcher: Launcher
    stopping: bool = False  # told to stop; no longer counted


class ScalingController:
    def __init__(self, queue: LocalTaskQueue, config: ScalingConfig, probe: Any = None) -> None:
        self.queue = queue
        self.config = config
        self.probe = probe or ResourceProbe()
        self.launched: dict[int, list[_Launched]] = {t.task_type: [] for t in config.types}
        self._last: dict[int, tuple[str, str]] = {}

    def step(self) -> list[Decision]:
        """One look at every type; returns the decisions taken (holds included)."""
        stats = self.queue.stats()
        decisions = []
        for scaling in self.config.types:
            alive = self._alive(scaling.task_type)
            queued = stats.get(scaling.task_type, {}).get("queued", 0)
            decision = self._decide(scaling, queued, len(alive))
            if decision.action == "start":
                job_id = scaling.launcher.start(scaling.pool)
                self.launched[scaling.task_type].append(_Launched(job_id, scaling.launcher))
                decision.job_id = job_id
            elif decision.action == "stop":
                decision.job_id = self._stop_idle(alive)
                if decision.job_id is None:
                    decision = Decision(scaling.task_type, "hold", "queue empty but every pool is busy",
                                        queued, len(alive))
            self._record(decision)
            decisions.append(decision)
        return decisions

    def run(self, stop: threading.Event) -> None:
        """step() every check_interval seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # the controller outlives a failed launch or probe
                log.exception("scaling step failed")
            stop.wait(self.config.check_interval)

    def shutdown(self) -> None:
        """Stop every pool this controller started."""
        for jobs in self.launched.values():
            for job in jobs:
                job.launcher.cancel(job.job_id)

    # -- internals ------------------------------------------------------------------------------
    def _alive(self, task_type: int) -> list[_Launched]:
        """The pools we started that run and were not told to stop (finished ones are forgotten)."""
        jobs = self.launched[task_type]
        jobs[:] = [j for j in jobs if not j.launcher.status(j.job_id).finished]
        return [j for j in jobs if not j.stopping]

    def _decide(self, s: TypeScaling, queued: int, count: int) -> Decision:
        def make(action: str, reason: str) -> Decision:
            return Decision(s.task_type, action, reason, queued, count)

        if count < s.min_pools:
            return make("start", f"{count} pools < min {s.min_pools}")
        if queued > s.scale_up_queued:
            if count >= s.max_pools:
                return make("hold", f"{queued} queued but already at max {s.max_pools} pools")
            blocked = self._resources_block(s)
            if blocked:
                return make("hold", f"{queued} queued but {blocked}")
            return make("start", f"{queued} queued > {s.scale_up_queued}, resources free")
        if queued == 0 and count > s.min_pools:
            return make("stop", f"queue empty, {count} pools > min {s.min_pools}")
        return make("hold", f"{queued} queued, {count} pools: nothing to do")

    def _resources_block(self, s: TypeScaling) -> str | None:
        cfg = self.config
        free_ram = self.probe.free_memory_gib()
        if free_ram < cfg.min_system_memory_gib:
            return f"free RAM {free_ram:.1f} GiB < {cfg.min_system_memory_gib} GiB"
        if s.gpu:
            gpus: list[GpuState] = self.probe.gpus()
            fits = [g for g in gpus if g.free_gib >= s.min_gpu_memory_gib and g.utilization < s.max_gpu_utilization]
            if not fits:
                return (f"no GPU with >= {s.min_gpu_memory_gib} GiB free and < {s.max_gpu_utilization}% busy "
                        f"({len(gpus)} GPUs seen)")
            return None
        cpu = self.probe.cpu_percent()
        if cpu >= cfg.cpu_usage_threshold:
            return f"CPU {cpu:.0f}% >= {cfg.cpu_usage_threshold}%"
        load = self.probe.load_per_core()
        if load >= cfg.normalized_load_threshold:
            return f"load per core {load:.2f} >= {cfg.normalized_load_threshold}"
        return None

    def _stop_idle(self, alive: list[_Launched]) -> str | None:
        """Ask the newest idle pool we started to stop; returns its job id."""
        by_job = {p.job_id or str(p.pid): p for p in self.queue.pools(active_only=True)}
        candidates = [(job, by_job[job.job_id]) for job in reversed(alive) if job.job_id in by_job]
        names = [f"{info.name}-{info.pool_id}" for _, info in candidates]
        busy = {name for name, _ in self.queue.db.fetch_all("pool_running_counts", {"pools": names})}
        for (job, info), name in zip(candidates, names, strict=True):
            if name not in busy:
                self.queue.db.fetch_all("request_pool_stop_by_id", {"mode": StopMode.NOW.value,
                                                                    "pool_id": info.pool_id})
                job.stopping = True
                return job.job_id
        return None

    def _record(self, d: Decision) -> None:
        key = (d.action, d.reason)
        if d.action == "hold" and self._last.get(d.task_type) == key:
            return  # an unchanged hold is not news
        self._last[d.task_type] = key
        log.info("scaling decision", extra={"task_type": d.task_type, "action": d.action, "reason": d.reason,
                                            "job_id": d.job_id})
        self.queue.db.execute("record_decision", {"task_type": d.task_type, "action": d.action,
                                                  "reason": d.reason, "queued": d.queued, "pools": d.pools,
                                                  "job_id": d.job_id}, idempotent=False)

    def recent(self, limit: int = 20) -> list[tuple[Any, ...]]:
        return self.queue.db.fetch_all("recent_decisions", {"limit": limit})
