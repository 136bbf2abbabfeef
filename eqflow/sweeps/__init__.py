"""Parameter sweeps on eqflow: grid and binary search (Runner's API) and ASHA trials (slurm_sweeps' API)."""

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

__all__ = [
    "ASHA", "Choice", "Experiment", "Grid", "LogUniform", "Result", "SlurmCfg", "Status", "Trial", "TrialPruned",
    "Uniform", "log",
    "REQUIRED", "BaseExperimentConfig", "BinarySearchConfig", "GPUJob", "GPUJobResult", "GridSearchConfig",
    "InvalidConfigurationError", "apply_overrides", "main", "pydraclass", "run_binary_searches",
    "run_grid_searches", "visible_gpus",
]
