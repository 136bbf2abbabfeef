"""ResourceProbe on this machine's real CPU, load and memory (psutil), checked against the kernel's
own numbers and against load we make."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eqflow.resources import ResourceProbe

MEMINFO = Path("/proc/meminfo")


@pytest.mark.skipif(not MEMINFO.exists(), reason="no /proc/meminfo to compare with (not Linux)")
def test_free_memory_is_the_kernels_mem_available():
    fields = {line.split(":")[0]: int(line.split()[1]) for line in MEMINFO.read_text().splitlines()}
    kernel_gib, total_gib = fields["MemAvailable"] / 1024**2, fields["MemTotal"] / 1024**2
    free = ResourceProbe().free_memory_gib()
    assert 0 < free < total_gib
    assert abs(free - kernel_gib) < 0.5  # other processes come and go between the two readings


def test_load_per_core_is_the_one_minute_load_over_the_cpus():
    expected = os.getloadavg()[0] / (os.cpu_count() or 1)
    assert abs(ResourceProbe().load_per_core() - expected) < 0.25


def test_cpu_percent_sees_busy_cpus():
    probe = ResourceProbe(smoothing=1.0)  # no smoothing: each call is the last interval's use
    first = probe.cpu_percent()
    assert 0.0 <= first <= 100.0
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.3)  # let them start
        probe.cpu_percent()
        time.sleep(1.5)
        busy = probe.cpu_percent()
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    assert busy > 60.0, f"{len(spinners)} spinning processes, yet CPU use read {busy}%"


def test_smoothing_is_a_weight_in_0_1():
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="smoothing"):
            ResourceProbe(smoothing=bad)


def test_gpus_are_empty_without_nvml_or_match_the_driver():
    """Without nvidia-ml-py or a driver: no GPUs. With them: one state per device nvidia-smi lists."""
    gpus = ResourceProbe().gpus()
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        assert gpus == []
        return
    try:
        import pynvml  # noqa: F401 - nvidia-ml-py
    except ImportError:
        assert gpus == []
        return
    assert [g.index for g in gpus] == list(range(len(listed.stdout.strip().splitlines())))
    assert all(g.free_gib > 0 and 0 <= g.utilization <= 100 for g in gpus)
