"""What a node has free: CPU (smoothed), load per core, RAM, and GPUs through NVML."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuState:
    index: int
    free_gib: float
    utilization: float  # percent


class ResourceProbe:
    """Reads /proc and NVML. ``cpu_percent`` is an exponential moving average of /proc/stat."""

    def __init__(self, smoothing: float = 0.5) -> None:
        self.smoothing = smoothing
        self._last: tuple[int, int] | None = None
        self._cpu: float | None = None

    def cpu_percent(self) -> float:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        total = sum(fields)
        if self._last is None:
            self._last = (idle, total)
            time.sleep(0.1)
            return self.cpu_percent()
        d_idle, d_total = idle - self._last[0], total - self._last[1]
        self._last = (idle, total)
        sample = 100.0 * (1 - d_idle / d_total) if d_total > 0 else 0.0
        self._cpu = sample if self._cpu is None else self.smoothing * sample + (1 - self.smoothing) * self._cpu
        return self._cpu

    def load_per_core(self) -> float:
        return os.getloadavg()[0] / (os.cpu_count() or 1)

    def free_memory_gib(self) -> float:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024**2
        return 0.0

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
