"""Task implementations shipped with eqflow. A task function takes the payload (str) and
returns the result (str); an exception becomes a failure report with its traceback."""

from __future__ import annotations

import json
import math
import os
import time


def noop(payload: str) -> str:
    return payload


def sleep(payload: str) -> str:
    """Payload: {"seconds": s}. Sleeps, then echoes the payload."""
    seconds = float(json.loads(payload).get("seconds", 0.0))
    if seconds > 0:  # sleep(0) is still a system call: 80 µs on some virtual machines
        time.sleep(seconds)
    return payload


def ackley(payload: str) -> str:
    """Payload: {"x": [...], "delay": s?}. Result: {"y": ackley(x)}."""
    spec = json.loads(payload)
    x = [float(v) for v in spec["x"]]
    if spec.get("delay"):
        time.sleep(float(spec["delay"]))
    n = len(x)
    s1 = sum(v * v for v in x) / n
    s2 = sum(math.cos(2 * math.pi * v) for v in x) / n
    y = -20.0 * math.exp(-0.2 * math.sqrt(s1)) - math.exp(s2) + 20.0 + math.e
    return json.dumps({"y": y})


def cuda_device(payload: str) -> str:
    """Which GPU slot this worker was given."""
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def allocate(payload: str) -> str:
    """Payload: {"mb": n}. Allocates n MiB (tests the memory limit)."""
    block = bytearray(int(json.loads(payload)["mb"]) * 1024 * 1024)
    return str(len(block))


def fail(payload: str) -> str:
    raise RuntimeError(f"failing on purpose: {payload}")
