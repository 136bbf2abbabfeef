"""Dynamic scaling of FunSearch's samplers and evaluators, with the reference's rules, names and
defaults (DistributedFunSearch's ``--dynamic-scaling``), where the queues are the task table.

Every ``check_interval`` seconds, at most one start or stop per kind:

* **Samplers** start when more than ``sampler_scale_up_threshold`` ``sample`` tasks are queued,
  fewer than ``max_samplers`` run, a GPU no sampler holds has ``min_gpu_memory_gib`` free and is
  under ``max_gpu_utilization`` % busy (or, when no single GPU does, several such GPUs together
  reach the memory: the sampler gets them all), and ``min_system_memory_gib`` of RAM is free.
  One stops when no ``sample`` task is queued and more than ``min_samplers`` run, preferring one
  whose GPUs are under ``idle_sampler_gpu_utilization`` % busy (the least busy otherwise). On a
  node without GPUs, or with ``samplers_need_gpu: false`` (API samplers), samplers start on the
  evaluators' CPU rule instead of the GPU rule.
* **Evaluators** start when more than ``evaluator_scale_up_threshold`` ``evaluate`` tasks are
  queued, fewer than ``max_evaluators`` run, the smoothed CPU use is under ``cpu_usage_threshold`` %
  and the 1-minute load per core under ``normalized_load_threshold``. One stops when none is
  queued and more than ``min_evaluators`` run, preferring one under ``idle_evaluator_cpu_percent``
  % CPU (its pool process and workers together).
* Below ``min_*`` a pool starts whatever the queue holds (resources permitting).

A stop is SIGTERM (the pool hands its tasks back to the queue and exits), then SIGKILL after
``*_stop_grace_s`` (tasks still held come back when their leases run out). Every decision is
logged, kept in ``scaling_decisions`` (a hold only when its reason changes) and written to the
per-host resources log ``<log_dir>/resources_<host>_pid<pid>.log`` with the figures it was
based on. The GPU probe can be replaced (tests: ``gpu_probe=``); CPU, load and RAM are measured.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from eqflow.resources import GpuState, ProcessCpu, ResourceProbe

log = logging.getLogger("eqflow.scaling")

Kind = Literal["sampler", "evaluator"]
KINDS: tuple[Kind, Kind] = ("sampler", "evaluator")


class ScalingSettings(BaseModel):
    """``funsearch.scaling``: the reference's names and defaults."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="--dynamic-scaling / --no-dynamic-scaling (off: the "
                                                     "config's pools only, as eqflow's other workflows)")
    check_interval: float = Field(default=120.0, ge=0, description="seconds between scaling checks")
    sampler_scale_up_threshold: int = Field(default=50, ge=0, description="start a sampler above this many "
                                                                          "queued sample tasks")
    evaluator_scale_up_threshold: int = Field(default=10, ge=0, description="start an evaluator above this "
                                                                            "many queued evaluate tasks")
    min_gpu_memory_gib: float = Field(default=20.0, ge=0, description="free GPU memory a new sampler needs "
                                                                      "(on one GPU, or several together)")
    max_gpu_utilization: float = Field(default=50.0, ge=0, description="GPUs busier than this (%) take no "
                                                                        "new sampler")
    min_system_memory_gib: float = Field(default=30.0, ge=0, description="free RAM a new sampler needs")
    cpu_usage_threshold: float = Field(default=99.0, ge=0, description="smoothed CPU use (%) under which an "
                                                                       "evaluator may start")
    normalized_load_threshold: float = Field(default=0.99, ge=0, description="1-minute load per core under "
                                                                             "which an evaluator may start")
    max_samplers: int = Field(default=1000, ge=0, description="most sampler pools at once")
    min_samplers: int = Field(default=1, ge=0, description="sampler pools kept running (started first)")
    max_evaluators: int = Field(default=1000, ge=0, description="most evaluator pools at once")
    min_evaluators: int = Field(default=1, ge=0, description="evaluator pools kept running (started first)")
    samplers_need_gpu: bool | None = Field(
        default=None, description="null: when the node has GPUs (as the reference, which uses the CPU rule on "
                                  "a node without); false for API or mutation samplers (the CPU rule)")
    idle_sampler_gpu_utilization: float = Field(default=10.0, ge=0, description="stop first a sampler whose "
                                                                                "GPUs are under this (%)")
    idle_evaluator_cpu_percent: float = Field(default=20.0, ge=0, description="stop first an evaluator under "
                                                                              "this CPU (%)")
    sampler_stop_grace_s: float = Field(default=45.0, ge=0, description="SIGTERM to SIGKILL, samplers")
    evaluator_stop_grace_s: float = Field(default=30.0, ge=0, description="SIGTERM to SIGKILL, evaluators")
    log_dir: str = Field(default="logs", description="where resources_<host>_pid<pid>.log goes")

    @model_validator(mode="after")
    def _ranges(self) -> ScalingSettings:
        for kind in ("samplers", "evaluators"):
            low, high = getattr(self, f"min_{kind}"), getattr(self, f"max_{kind}")
            if low > high:
                raise ValueError(f"min_{kind} ({low}) > max_{kind} ({high})")
        return self


# -- the CLI flags (the reference's), for `eqflow funsearch run` ---------------------------------
def add_scaling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dynamic scaling (funsearch.scaling)")
    group.add_argument("--dynamic-scaling", action=argparse.BooleanOptionalAction, default=None,
                       help="start and stop samplers and evaluators from queue length and free GPU/CPU")
    group.add_argument("--check-interval", type=float, default=None, help="seconds between scaling checks")
    for flag in ("max-samplers", "max-evaluators", "min-samplers", "min-evaluators"):
        key = flag.replace("-", "_")
        group.add_argument(f"--{flag}", type=int, default=None, help=f"override funsearch.scaling.{key}")


def settings_from_args(settings: ScalingSettings, args: argparse.Namespace) -> ScalingSettings:
    """``settings`` with the flags given on the command line applied (validated again)."""
    updates: dict[str, Any] = {}
    if getattr(args, "dynamic_scaling", None) is not None:
        updates["enabled"] = args.dynamic_scaling
    for name in ("check_interval", "max_samplers", "max_evaluators", "min_samplers", "min_evaluators"):
        if getattr(args, name, None) is not None:
            updates[name] = getattr(args, name)
    return ScalingSettings.model_validate({**settings.model_dump(), **updates})


# -- pools --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolProc:
    """A running sampler or evaluator pool as the scaler sees it."""

    name: str
    kind: Kind
    pid: int
    gpus: tuple[int, ...] = ()
    started_at: float = 0.0


class PoolControl(Protocol):
    """What the scaler needs from whoever starts pools (``LocalPools`` here; a batch-job launcher
    elsewhere). ``gpus``: host GPU indexes the new pool gets (CUDA_VISIBLE_DEVICES)."""

    def start(self, kind: Kind, reason: str, gpus: Sequence[int] = ()) -> str: ...
    def stop(self, name: str, grace_s: float) -> None: ...
    def running(self, kind: Kind) -> list[PoolProc]: ...


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    info: PoolProc
    stopping: bool = False


@dataclass
class LocalPools:
    """Sampler and evaluator pools as child processes (``python -m eqflow.workers.pool``), each in
    its own session, its GPUs in CUDA_VISIBLE_DEVICES. ``specs`` gives the pool to run per kind
    (its task type, function, workers, threads); names are ``<exp_id>-<kind>-<n>``."""

    specs: Mapping[str, Any]  # eqflow.workers.launchers.PoolSpec per kind
    exp_id: str
    db_url: str | None = None
    log_dir: Path | None = None
    queue: Any = None  # records pool_started / pool_stopped events when given
    env: dict[str, str] = field(default_factory=dict)
    _children: dict[str, _Child] = field(default_factory=dict)
    _counter: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_config(cls, cfg: Any, exp_id: str, queue: Any, log_dir: Path | None = None) -> LocalPools:
        """The pools of ``tasks.sample`` and ``tasks.evaluate`` (the first pool each names; local
        ones) as the pools the scaler starts more of."""
        from eqflow.workers.launchers import PoolSpec

        specs: dict[str, Any] = {}
        for kind, task_name in (("sampler", "sample"), ("evaluator", "evaluate")):
            task = cfg.tasks[task_name]
            pool = cfg.pools[task.pools[0]]
            if pool.type != "local":
                raise ValueError(f"dynamic scaling starts local pools; tasks.{task_name}.pools[0] "
                                 f"({task.pools[0]}) is {pool.type}")
            specs[kind] = PoolSpec([task.type], fn=pool.fn, cmd=pool.cmd, workers=pool.workers,
                                   batch_size=pool.batch_size, threshold=pool.threshold,
                                   threads=bool(getattr(pool, "threads", False)), idle_exit=pool.idle_exit)
        return cls(specs, exp_id, db_url=getattr(queue, "url", None), log_dir=log_dir, queue=queue)

    def start(self, kind: Kind, reason: str, gpus: Sequence[int] = ()) -> str:
        with self._lock:
            self._counter += 1
            name = f"{self.exp_id}-{kind}-{self._counter}"
        spec = replace(self.specs[kind], name=name, db_url=self.db_url or self.specs[kind].db_url)
        env = {**os.environ, "EQFLOW_LAUNCHER": "local", **self.env, **spec.environment()}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        out: Any = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        try:
            proc = subprocess.Popen(spec.argv(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        info = PoolProc(name, kind, proc.pid, tuple(gpus), time.time())
        self._children[name] = _Child(proc, info)
        if self.queue is not None:
            self.queue.record_event(self.exp_id, "pool_started", {
                "pool": name, "task": kind, "launcher": "local", "job_id": str(proc.pid), "gpus": list(gpus),
                "reason": reason})
        return name

    def stop(self, name: str, grace_s: float) -> None:
        """SIGTERM now; SIGKILL (the pool and its workers) if it is still there after grace_s."""
        child = self._children.get(name)
        if child is None or child.stopping:
            return
        child.stopping = True
        workers = _descendants(child.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)
        threading.Thread(target=self._reap, args=(child, grace_s, workers), name=f"stop-{name}", daemon=True).start()

    def _reap(self, child: _Child, grace_s: float, workers: list[int]) -> None:
        try:
            child.proc.wait(timeout=grace_s)
            how = "exited"
        except subprocess.TimeoutExpired:
            log.warning("pool ignored SIGTERM for its grace period: SIGKILL", extra={
                "pool": child.info.name, "grace_s": grace_s})
            for pid in [child.proc.pid, *workers, *_descendants(child.proc.pid)]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            child.proc.wait()
            how = "killed"
        if self.queue is not None:
            with contextlib.suppress(Exception):  # the database may be gone at shutdown
                self.queue.record_event(self.exp_id, "pool_stopped", {"pool": child.info.name, "how": how,
                                                                      "job_id": str(child.proc.pid)})

    def running(self, kind: Kind) -> list[PoolProc]:
        return [c.info for c in self._children.values()
                if c.info.kind == kind and not c.stopping and c.proc.poll() is None]

    def stop_all(self, grace_s: float = 30.0) -> None:
        for name in list(self._children):
            self.stop(name, grace_s)
        deadline = time.monotonic() + grace_s + 5
        for child in self._children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


# -- the scaler ---------------------------------------------------------------------------------
@dataclass
class Decision:
    kind: Kind
    action: str  # start | stop | hold
    reason: str
    queued: int
    pools: int
    pool: str | None = None
    gpus: tuple[int, ...] = ()


@dataclass
class Snapshot:
    """What one check saw."""

    queued: dict[Kind, int]
    free_ram_gib: float
    cpu_percent: float
    load_per_core: float
    gpus: list[GpuState]

    def line(self) -> str:
        gpus = " ".join(f"GPU{g.index}: {g.free_gib:.1f} GiB free {g.utilization:.0f}%" for g in self.gpus)
        return (f"queued sample={self.queued['sampler']} evaluate={self.queued['evaluator']} | CPU "
                f"{self.cpu_percent:.0f}% load/core {self.load_per_core:.2f} | free RAM {self.free_ram_gib:.1f} GiB"
                + (f" | {gpus}" if gpus else " | no GPUs"))


class DynamicScaler:
    """``check(now)`` applies the rules once ``check_interval`` has passed (``force=True``: now)."""

    def __init__(self, queue: Any, exp_id: str, settings: ScalingSettings, pools: PoolControl, *,
                 task_types: Mapping[str, int], probe: ResourceProbe | None = None,
                 gpu_probe: Callable[[], list[GpuState]] | None = None, log_dir: str | Path | None = None) -> None:
        self.queue = queue
        self.exp_id = exp_id
        self.settings = settings
        self.pools = pools
        missing = set(KINDS) - set(task_types)
        if missing:
            raise ValueError(f"task_types needs {sorted(missing)} (the sample and evaluate task types)")
        self.task_types = {k: int(task_types[k]) for k in KINDS}
        self.probe = probe or ResourceProbe()
        self.gpu_probe = gpu_probe or self.probe.gpus  # the one thing a test may replace
        self.process_cpu = ProcessCpu()
        self.last_check: float | None = None
        self._last_hold: dict[Kind, str] = {}
        self.resources_log, self.resources_log_path = _resources_logger(
            Path(log_dir if log_dir is not None else settings.log_dir))

    def check(self, now: float | None = None, *, force: bool = False) -> list[Decision]:
        now = time.monotonic() if now is None else now
        if not self.settings.enabled:
            return []
        if not force and self.last_check is not None and now - self.last_check < self.settings.check_interval:
            return []
        self.last_check = now
        snap = self._snapshot()
        self.resources_log.info(snap.line())
        decisions = [self._samplers(snap), self._evaluators(snap)]
        for decision in decisions:
            self._record(decision)
        return decisions

    def close(self) -> None:
        for handler in list(self.resources_log.handlers):
            handler.close()
            self.resources_log.removeHandler(handler)

    # -- figures ----------------------------------------------------------------------------------
    def _snapshot(self) -> Snapshot:
        stats = self.queue.stats(self.exp_id)
        queued: dict[Kind, int] = {k: int(stats.get(self.task_types[k], {}).get("queued", 0)) for k in KINDS}
        try:
            gpus = list(self.gpu_probe())
        except Exception as exc:  # a broken NVML is no GPU, not a dead scaler
            log.warning("GPU probe failed", extra={"error": str(exc)})
            gpus = []
        return Snapshot(queued, self.probe.free_memory_gib(), self.probe.cpu_percent(), self.probe.load_per_core(),
                        gpus)

    # -- samplers ---------------------------------------------------------------------------------
    def _samplers(self, snap: Snapshot) -> Decision:
        s = self.settings
        running = self.pools.running("sampler")
        count, queued = len(running), snap.queued["sampler"]

        def make(action: str, reason: str) -> Decision:
            return Decision("sampler", action, reason, queued, count)

        if count < s.min_samplers or queued > s.sampler_scale_up_threshold:
            why = (f"{count} samplers < min_samplers {s.min_samplers}" if count < s.min_samplers
                   else f"{queued} sample tasks queued > {s.sampler_scale_up_threshold}")
            if count >= s.max_samplers:
                return make("hold", f"{why}, but already max_samplers {s.max_samplers}")
            if snap.free_ram_gib < s.min_system_memory_gib:
                return make("hold", f"{why}, but free RAM {snap.free_ram_gib:.1f} GiB < {s.min_system_memory_gib:g}")
            need_gpu = s.samplers_need_gpu if s.samplers_need_gpu is not None else bool(snap.gpus)
            if not need_gpu:
                blocked = self._cpu_block(snap)
                if blocked:
                    return make("hold", f"{why}, but {blocked}")
                return self._start(make("start", f"{why}; CPU and RAM free"))
            gpus, where = self._gpu_assignment(snap.gpus, running)
            if not gpus:
                return make("hold", f"{why}, but {where}")
            decision = make("start", f"{why}; {where}; free RAM {snap.free_ram_gib:.1f} GiB")
            decision.gpus = tuple(gpus)
            return self._start(decision)
        if queued == 0 and count > s.min_samplers:
            return self._stop(make("stop", ""), running, self._sampler_busy(running, snap.gpus),
                              s.idle_sampler_gpu_utilization, "GPU", s.sampler_stop_grace_s)
        return make("hold", f"{queued} sample tasks queued, {count} samplers: nothing to do")

    def _gpu_assignment(self, gpus: list[GpuState], running: list[PoolProc]) -> tuple[list[int], str]:
        """GPUs for a new sampler, and why (or why none): the GPU with most memory free among those
        that qualify alone, else the fewest GPUs (most free first) that together reach the memory."""
        s = self.settings
        if not gpus:
            return [], "no GPUs seen (samplers_need_gpu)"
        taken = {g for p in running for g in p.gpus}
        calm = [g for g in gpus if g.index not in taken and g.utilization < s.max_gpu_utilization]
        alone = sorted((g for g in calm if g.free_gib >= s.min_gpu_memory_gib), key=lambda g: (-g.free_gib,
                                                                                              g.utilization))
        if alone:
            g = alone[0]
            return [g.index], f"GPU {g.index}: {g.free_gib:.1f} GiB free >= {s.min_gpu_memory_gib:g}, " \
                              f"{g.utilization:.0f}% < {s.max_gpu_utilization:g}%"
        chosen: list[GpuState] = []
        for g in sorted(calm, key=lambda g: (-g.free_gib, g.utilization)):
            chosen.append(g)
            if sum(c.free_gib for c in chosen) >= s.min_gpu_memory_gib:
                indexes = sorted(c.index for c in chosen)
                total = sum(c.free_gib for c in chosen)
                return indexes, (f"no single GPU has {s.min_gpu_memory_gib:g} GiB free; GPUs "
                                 f"{','.join(map(str, indexes))} together {total:.1f} GiB, each < "
                                 f"{s.max_gpu_utilization:g}% busy")
        return [], (f"no GPU with {s.min_gpu_memory_gib:g} GiB free and < {s.max_gpu_utilization:g}% busy, nor "
                    f"several together ({len(gpus)} GPUs, {len(taken & {g.index for g in gpus})} held by samplers, "
                    f"{len(calm)} calm with {sum(g.free_gib for g in calm):.1f} GiB free)")

    def _sampler_busy(self, running: list[PoolProc], gpus: list[GpuState]) -> dict[str, float]:
        """How busy each sampler is: its GPUs' utilisation (the busiest of them); CPU % for one without."""
        util = {g.index: g.utilization for g in gpus}
        cpu = self.process_cpu.percent([p.pid for p in running if not p.gpus])
        return {p.name: max(util.get(i, 0.0) for i in p.gpus) if p.gpus else cpu.get(p.pid, 0.0) for p in running}

    # -- evaluators -------------------------------------------------------------------------------
    def _evaluators(self, snap: Snapshot) -> Decision:
        s = self.settings
        running = self.pools.running("evaluator")
        count, queued = len(running), snap.queued["evaluator"]

        def make(action: str, reason: str) -> Decision:
            return Decision("evaluator", action, reason, queued, count)

        if count < s.min_evaluators or queued > s.evaluator_scale_up_threshold:
            why = (f"{count} evaluators < min_evaluators {s.min_evaluators}" if count < s.min_evaluators
                   else f"{queued} evaluate tasks queued > {s.evaluator_scale_up_threshold}")
            if count >= s.max_evaluators:
                return make("hold", f"{why}, but already max_evaluators {s.max_evaluators}")
            blocked = self._cpu_block(snap)
            if blocked:
                return make("hold", f"{why}, but {blocked}")
            return self._start(make("start", f"{why}; CPU {snap.cpu_percent:.0f}% < {s.cpu_usage_threshold:g}%, "
                                              f"load/core {snap.load_per_core:.2f} < {s.normalized_load_threshold:g}"))
        if queued == 0 and count > s.min_evaluators:
            cpu = self.process_cpu.percent([p.pid for p in running])
            busy = {p.name: cpu.get(p.pid, 0.0) for p in running}
            return self._stop(make("stop", ""), running, busy, s.idle_evaluator_cpu_percent, "CPU",
                              s.evaluator_stop_grace_s)
        return make("hold", f"{queued} evaluate tasks queued, {count} evaluators: nothing to do")

    def _cpu_block(self, snap: Snapshot) -> str | None:
        s = self.settings
        if snap.cpu_percent >= s.cpu_usage_threshold:
            return f"CPU {snap.cpu_percent:.0f}% >= cpu_usage_threshold {s.cpu_usage_threshold:g}%"
        if snap.load_per_core >= s.normalized_load_threshold:
            return (f"load per core {snap.load_per_core:.2f} >= normalized_load_threshold "
                    f"{s.normalized_load_threshold:g}")
        return None

    # -- acting -----------------------------------------------------------------------------------
    def _start(self, decision: Decision) -> Decision:
        try:
            decision.pool = self.pools.start(decision.kind, decision.reason, decision.gpus)
        except Exception as exc:  # a failed launch is a hold with its reason, and the next check tries again
            log.exception("scaling: start failed", extra={"kind": decision.kind})
            decision.action, decision.reason = "hold", f"{decision.reason}; start failed: {exc}"[:2000]
        return decision

    def _stop(self, decision: Decision, running: list[PoolProc], busy: dict[str, float], idle_below: float,
              what: str, grace_s: float) -> Decision:
        # The least busy; among equals the newest (the oldest has its model warm longest).
        victim = min(reversed(running), key=lambda p: busy.get(p.name, 0.0))
        level = busy.get(victim.name, 0.0)
        kind = decision.kind
        quiet = (f"{what} {level:.0f}% < {idle_below:g}%" if level < idle_below
                 else f"none under {idle_below:g}% {what}: the least busy ({level:.0f}%)")
        decision.reason = (f"no {'sample' if kind == 'sampler' else 'evaluate'} task queued, {decision.pools} "
                           f"{kind}s > min_{kind}s {getattr(self.settings, f'min_{kind}s')}; stopping {victim.name} "
                           f"({quiet})")
        decision.pool = victim.name
        decision.gpus = victim.gpus
        self.pools.stop(victim.name, grace_s)
        return decision

    def _record(self, d: Decision) -> None:
        self.resources_log.info(f"{d.kind} {d.action}: {d.reason}" + (f" [{d.pool}]" if d.pool else ""))
        if d.action == "hold":
            gist = re.sub(r"\d+(\.\d+)?", "#", d.reason)  # the same hold with other figures is not news
            if self._last_hold.get(d.kind) == gist:
                return
            self._last_hold[d.kind] = gist
        else:
            self._last_hold.pop(d.kind, None)
        log.info("scaling decision", extra={"kind": d.kind, "action": d.action, "reason": d.reason, "pool": d.pool,
                                            "queued": d.queued, "pools": d.pools})
        self.queue.db.execute("record_decision", {
            "task_type": self.task_types[d.kind], "action": d.action, "reason": d.reason, "queued": d.queued,
            "pools": d.pools, "job_id": d.pool}, idempotent=False)


def _resources_logger(log_dir: Path) -> tuple[logging.Logger, Path]:
    """A file logger of its own: ``<log_dir>/resources_<host>_pid<pid>.log`` (one per scaler process)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"resources_{socket.gethostname()}_pid{os.getpid()}.log"
    logger = logging.getLogger(f"eqflow.resources.{os.getpid()}.{id(path)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    return logger, path
