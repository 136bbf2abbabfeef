"""What a node has free: CPU (smoothed), load per core, RAM (through psutil), and GPUs through NVML."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class GpuState:
    index: int
    free_gib: float
    utilization: float  # percent


class ResourceProbe:
    """psutil for CPU and memory, NVML (``nvidia-ml-py``, optional) for GPUs.

    ``cpu_percent`` is an exponential moving average of psutil's system-wide CPU use between
    calls; ``smoothing`` is the weight of the newest sample (1.0: no smoothing).
    """

    def __init__(self, smoothing: float = 0.5) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.smoothing = smoothing
        self._cpu: float | None = None

    def cpu_percent(self) -> float:
        # The first sample of a probe measures over a short interval; later ones cover the time
        # since the previous call (psutil keeps the last reading).
        sample = psutil.cpu_percent(interval=0.1 if self._cpu is None else None)
        self._cpu = sample if self._cpu is None else self.smoothing * sample + (1 - self.smoothing) * self._cpu
        return self._cpu

    def load_per_core(self) -> float:
        """The 1-minute load average divided by the number of logical CPUs."""
        return psutil.getloadavg()[0] / (psutil.cpu_count() or 1)

    def free_memory_gib(self) -> float:
        """Memory available to new processes without swapping (MemAvailable on Linux)."""
        return psutil.virtual_memory().available / 1024**3

    def gpus(self) -> list[GpuState]:
        try:
            import pynvml  # nvidia-ml-py
        except ImportError:
            return []
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            return []
        try:
            states = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                util = pynvml.nvmlDeviceGetUtilizationRates(handle)
                states.append(GpuState(i, mem.free / 1024**3, float(util.gpu)))
            return states
        finally:
            pynvml.nvmlShutdown()


class ProcessCpu:
    """CPU use of processes with their children (a pool and its worker processes), in percent of
    one core, between two calls; a process seen for the first time is measured over ``prime_s``."""

    def __init__(self, prime_s: float = 0.5) -> None:
        self.prime_s = prime_s
        self._procs: dict[int, psutil.Process] = {}

    def _tree(self, pid: int) -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        tree = []
        for proc in members:
            known = self._procs.get(proc.pid)
            if known is None or known.create_time() != proc.create_time():
                self._procs[proc.pid] = known = proc
            tree.append(known)
        return tree

    def percent(self, pids: list[int]) -> dict[int, float]:
        trees = {pid: self._tree(pid) for pid in pids}
        fresh = [p for tree in trees.values() for p in tree if not hasattr(p, "_eqflow_seen")]
        if fresh:  # psutil measures since the last call: give new processes a short interval
            for proc in fresh:
                with contextlib.suppress(psutil.Error):
                    proc.cpu_percent(None)
                proc._eqflow_seen = True  # type: ignore[attr-defined]
            time.sleep(self.prime_s)
        out = {}
        for pid, tree in trees.items():
            total = 0.0
            for proc in tree:
                with contextlib.suppress(psutil.Error):
                    total += proc.cpu_percent(None)
            out[pid] = total
        return out
