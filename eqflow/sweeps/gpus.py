"""GPUs for grid and binary searches: which ones to use, and what a job reports back.

Slots are an eqflow GPU pool's workers: ``simultaneous_jobs_per_gpu`` worker processes per GPU,
each with its own ``CUDA_VISIBLE_DEVICES``, each running one job at a time, and a job goes to
whichever worker is free. So a free slot on any GPU takes the next job and no GPU ever runs more
than its slots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from eqflow.workers.gpu import detect_gpus


@dataclass
class GPUJob:
    """One job: the experiment config it runs, its output folder and the sweep values it stands for."""

    config: Any
    base_dir: str
    props: dict[str, Any]


@dataclass
class GPUJobResult:
    """What a job gave: ``success`` True when it returned, None when it raised (``error`` holds
    the traceback) or its worker was lost; ``result`` is what ``run_experiment_config`` returned."""

    success: bool | None
    error: str | None
    gpu_id: str | None
    out_file: str | None
    job: GPUJob
    result: Any = None


def _torch_count() -> int:
    try:
        import torch  # optional: only when neither the environment nor NVML name GPUs

        return int(torch.cuda.device_count())
    except Exception:  # no torch, or no CUDA runtime: no GPUs
        return 0


def visible_gpus(max_gpus: int | None = None) -> list[str]:
    """GPU ids from ``$CUDA_VISIBLE_DEVICES``, else NVML, else ``torch.cuda.device_count()``;
    the first ``max_gpus`` of them."""
    try:
        gpus = detect_gpus()
    except Exception:  # NVML present but broken: fall through to torch
        gpus = []
    if not gpus and os.environ.get("CUDA_VISIBLE_DEVICES") is None:
        gpus = [str(i) for i in range(_torch_count())]
    if max_gpus is not None:
        if max_gpus < 0:
            raise ValueError(f"max_gpus must be >= 0, got {max_gpus}")
        gpus = gpus[:max_gpus]
    return gpus
