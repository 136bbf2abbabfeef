"""Parameter sweeps on eqflow: grid and binary search (Runner's API) and ASHA trials (slurm_sweeps' API).

Names are imported on first use (PEP 562), so a pool worker that runs a grid-search job does not
pay for pandas and SQLAlchemy, which only the ASHA side needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "ASHA": "asha", "TrialPruned": "asha",
    "REQUIRED": "config", "BaseExperimentConfig": "config", "BinarySearchConfig": "config",
    "GridSearchConfig": "config", "InvalidConfigurationError": "config", "apply_overrides": "config",
    "main": "config", "pydraclass": "config",
    "Experiment": "experiment", "Result": "experiment", "SlurmCfg": "experiment", "Status": "experiment",
    "Trial": "experiment",
    "GPUJob": "gpus", "GPUJobResult": "gpus", "visible_gpus": "gpus",
    "run_binary_searches": "runner", "run_grid_searches": "runner",
    "Choice": "space", "Grid": "space", "LogUniform": "space", "Uniform": "space",
    "log": "trial",
}

__all__ = [
    "ASHA",
    "BaseExperimentConfig",
    "BinarySearchConfig",
    "Choice",
    "Experiment",
    "GPUJob",
    "GPUJobResult",
    "Grid",
    "GridSearchConfig",
    "InvalidConfigurationError",
    "LogUniform",
    "REQUIRED",
    "Result",
    "SlurmCfg",
    "Status",
    "Trial",
    "TrialPruned",
    "Uniform",
    "apply_overrides",
    "log",
    "main",
    "pydraclass",
    "run_binary_searches",
    "run_grid_searches",
    "visible_gpus",
]

if TYPE_CHECKING:
    from eqflow.sweeps.asha import ASHA, TrialPruned
    from eqflow.sweeps.config import (
        REQUIRED,
        BaseExperimentConfig,
        BinarySearchConfig,
        GridSearchConfig,
        InvalidConfigurationError,
        apply_overrides,
        main,
        pydraclass,
    )
    from eqflow.sweeps.experiment import Experiment, Result, SlurmCfg, Status, Trial
    from eqflow.sweeps.gpus import GPUJob, GPUJobResult, visible_gpus
    from eqflow.sweeps.runner import run_binary_searches, run_grid_searches
    from eqflow.sweeps.space import Choice, Grid, LogUniform, Uniform
    from eqflow.sweeps.trial import log


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'eqflow.sweeps' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"eqflow.sweeps.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
