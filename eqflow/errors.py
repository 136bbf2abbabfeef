"""The exceptions eqflow raises. Database driver errors become these at the connector."""

from __future__ import annotations


class EqflowError(Exception):
    """Base class of every error eqflow raises on purpose."""


class ConfigError(EqflowError):
    """A configuration value is missing or malformed."""


class InvalidInput(EqflowError, ValueError):
    """An argument is of the wrong type, size or value. Nothing was written."""


class PayloadTooLarge(InvalidInput):
    """A payload or result is larger than the configured limit. Nothing was written."""


class UnknownTask(EqflowError, KeyError):
    """One or more task ids do not exist in the database."""

    def __init__(self, task_ids: list[int]) -> None:
        self.task_ids = sorted(task_ids)
        shown = ", ".join(str(t) for t in self.task_ids[:10])
        more = f" (+{len(self.task_ids) - 10} more)" if len(self.task_ids) > 10 else ""
        super().__init__(f"unknown task id(s): {shown}{more}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DatabaseUnavailable(EqflowError):
    """The database could not be reached within the reconnect deadline."""


class AmbiguousCommit(DatabaseUnavailable):
    """The connection broke while a non-idempotent write was in flight: it may or may not
    have been applied. Re-attach to the experiment to see what exists."""


class AuthError(EqflowError):
    """The EMEWS service refused the bearer token."""


class DatabaseError(EqflowError):
    """The database rejected a statement (a constraint, a bad value)."""


class EmbeddedDatabaseError(EqflowError):
    """The embedded PostgreSQL cluster could not be created, started or stopped."""


class TaskFailed(EqflowError):
    """Raised by ``Future.result()`` when the task failed for good."""

    def __init__(self, task_id: int, error: str | None) -> None:
        self.task_id = task_id
        self.error = error
        super().__init__(f"task {task_id} failed: {error}")


class TaskCanceled(EqflowError):
    """Raised by ``Future.result()`` when the task was canceled."""

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id} was canceled")
