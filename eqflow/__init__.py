"""eqflow: a PostgreSQL task queue for model exploration on HPC and beyond."""

from pathlib import Path as _Path

from eqflow.errors import (
    AmbiguousCommit,
    AuthError,
    ConfigError,
    DatabaseError,
    DatabaseUnavailable,
    EqflowError,
    InvalidInput,
    PayloadTooLarge,
    TaskCanceled,
    TaskFailed,
    UnknownTask,
)
from eqflow.futures import Future, as_completed, pop_completed
from eqflow.models import ClaimedTask, PoolInfo, StopMode, TaskInfo, TaskStatus
from eqflow.queue import LocalTaskQueue

__version__ = "0.1.0"

# In a source checkout workers/, service/, sql/ and cfgs/ sit beside eqflow/ and are installed as
# eqflow.workers etc.; let them import under those names here too, so `python run.py` from a
# checkout works whether eqflow is installed editable, non-editable or not at all.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "workers" / "pool.py").is_file():
    __path__.append(str(_checkout))

__all__ = [
    "AmbiguousCommit", "AuthError", "ClaimedTask", "ConfigError", "DatabaseError", "DatabaseUnavailable",
    "EqflowError", "Future", "InvalidInput", "LocalTaskQueue", "PayloadTooLarge", "PoolInfo",
    "StopMode", "TaskCanceled", "TaskFailed", "TaskInfo", "TaskStatus", "UnknownTask",
    "as_completed", "pop_completed",
]
