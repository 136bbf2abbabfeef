"""GPU slots: which GPUs a node has, and which one each worker gets."""

from __future__ import annotations

import os


def detect_gpus() -> list[str]:
    """GPU ids visible to this process: ``$CUDA_VISIBLE_DEVICES`` if set, else NVML, else none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    from eqflow.resources import ResourceProbe

    return [str(gpu.index) for gpu in ResourceProbe().gpus()]


def slot_devices(gpus: list[str], workers_per_gpu: int, n_workers: int | None = None) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value of each worker: ``workers_per_gpu`` workers share a GPU.

    With ``n_workers`` None there is one worker per slot (len(gpus) * workers_per_gpu).
    """
    if workers_per_gpu < 1:
        raise ValueError(f"workers_per_gpu must be >= 1, got {workers_per_gpu}")
    if not gpus:
        raise ValueError("no GPUs found (set CUDA_VISIBLE_DEVICES or install nvidia-ml-py)")
    slots = [g for g in gpus for _ in range(workers_per_gpu)]
    if n_workers is None:
        return slots
    if n_workers > len(slots):
        raise ValueError(f"{n_workers} workers need more than the {len(slots)} GPU slots "
                         f"({len(gpus)} GPUs x {workers_per_gpu})")
    return slots[:n_workers]
