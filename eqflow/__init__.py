"""eqflow: a PostgreSQL task queue for model exploration on HPC and beyond."""

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

__all__ = [
    "AmbiguousCommit", "AuthError", "ClaimedTask", "ConfigError", "DatabaseError", "DatabaseUnavailable",
    "EqflowError", "Future", "InvalidInput", "LocalTaskQueue", "PayloadTooLarge", "PoolInfo",
    "StopMode", "TaskCanceled", "TaskFailed", "TaskInfo", "TaskStatus", "UnknownTask",
    "as_completed", "pop_completed",
]
