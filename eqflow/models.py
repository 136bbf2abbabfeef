"""Plain data that crosses the API: task states, claimed tasks, task snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any


class TaskStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELED})


class StopMode(str, Enum):
    DRAIN = "drain"  # finish what is queued, then exit
    NOW = "now"      # return unfinished tasks to the queue and exit


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    """A task held by a pool under a lease. Report it with the same object."""

    task_id: int
    exp_id: str
    task_type: int
    priority: int
    payload: str
    tag: str | None
    attempt: int
    claim_id: int | None  # None only for EQ-SQL-style reports that name no lease
    pool: str


@dataclass(frozen=True, slots=True)
class TaskInfo:
    task_id: int
    exp_id: str
    task_type: int
    status: TaskStatus
    priority: int
    pool: str | None
    result: str | None
    error: str | None
    tag: str | None
    attempts: int
    max_attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class PoolInfo:
    pool_id: int
    name: str
    task_types: list[int]
    launcher: str
    host: str | None
    pid: int | None
    job_id: str | None
    status: str
    n_workers: int
    stop_requested: StopMode | None
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None


@dataclass(frozen=True, slots=True)
class ExperimentEvent:
    """One entry of an experiment's event log: a retrain, a pool started, the run finished."""

    event_id: int
    at: datetime
    kind: str
    data: dict[str, Any]
