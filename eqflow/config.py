"""Workflow configuration: the EMEWS YAML shape, validated into typed models.

``${var}`` is replaced from the environment (and from ``variables:`` in the file) before
validation. Errors name the file, the key and what was expected.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from eqflow.errors import ConfigError

_VAR = re.compile(r"\$\{(\w+)\}")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DbConfig(Model):
    type: Literal["embedded", "url"] = "embedded"
    url: str | None = Field(None, description="postgresql:// URL (type url)")
    start: str | None = Field(None, description="shell command that starts the server before the run")
    stop: str | None = Field(None, description="shell command that stops it after the run")

    @model_validator(mode="after")
    def _url_for_url(self) -> DbConfig:
        if self.type == "url" and not self.url:
            raise ValueError("type url needs url")
        return self


class PoolConfig(Model):
    type: Literal["local", "slurm", "pbs", "globus"] = "local"
    fn: str | None = Field(None, description="task function module:function")
    cmd: str | None = Field(None, description="or a shell command template")
    workers: int = Field(1, ge=1)
    batch_size: int = Field(0, ge=0, description="most tasks in hand (0: workers)")
    threshold: int = Field(1, ge=1)
    nodes: int = Field(1, ge=1)
    ppn: int = Field(1, ge=1)
    walltime: str = "01:00:00"
    queue: str | None = None
    project: str | None = None
    setup: list[str] = Field(default_factory=list, description="lines run before the pool in a job script")
    idle_exit: float | None = Field(300.0, description="a pool idle this long exits (an orphan after a crash too)")
    gc_endpoint: str | None = Field(None, description="gc_endpoints entry that launches it (type globus)")
    remote_launcher: Literal["slurm", "pbs"] = "slurm"

    @model_validator(mode="after")
    def _one_task(self) -> PoolConfig:
        if (self.fn is None) == (self.cmd is None):
            raise ValueError("give exactly one of fn or cmd")
        return self


class TaskConfig(Model):
    type: int = Field(description="task type id")
    pools: list[str] = Field(description="pools (keys of pools:) that run it")
    queue: str = Field("local", description="task_queues entry used to submit it")


class ProxyStoreConfig(Model):
    type: Literal["file", "redis", "globus"] = "file"
    path: str = "out/proxystore"
    hostname: str | None = None
    port: int | None = None


class ScalingConfigModel(Model):
    dynamic: bool = False
    check_interval: float = 5.0
    max_pools: int = 3
    cpu_usage_threshold: float = 90.0
    normalized_load_threshold: float = 1.5
    min_system_memory_gib: float = 1.0


class WorkflowConfig(Model):
    dbs: dict[str, DbConfig] = Field(default_factory=lambda: {"main": DbConfig.model_validate({})})
    task_queues: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"local": {"type": "local", "db": "main"}})
    pools: dict[str, PoolConfig]
    tasks: dict[str, TaskConfig]
    gc_endpoints: dict[str, str] = Field(default_factory=dict)
    proxystore: ProxyStoreConfig = Field(default_factory=ProxyStoreConfig)
    reprioritize_endpoint: str = Field("local", description="'local' (in the ME) or 'pool' (a gpr task)")
    scaling: ScalingConfigModel = Field(default_factory=ScalingConfigModel)
    variables: dict[str, str] = Field(default_factory=dict)
    # the Ackley/GPR model exploration
    search_space_size: int = Field(750, ge=1)
    sample_dimensions: int = Field(4, ge=1)
    runtime: float = Field(0.5, ge=0, description="median seconds an Ackley task sleeps (lognormal)")
    runtime_var: float = Field(0.1, ge=0, description="sigma of the lognormal sleep")
    num_guesses: int = Field(100, ge=1, description="stop after this many results")
    retrain_after: int = Field(50, ge=1)
    acquisition: Literal["mean", "ucb", "ei"] = "mean"
    extra_pools_after_retrain: list[int] = Field(default_factory=lambda: [2, 4])
    output_dir: str = "out"
    seed: int = 0

    @model_validator(mode="after")
    def _references(self) -> WorkflowConfig:
        for name, task in self.tasks.items():
            for pool in task.pools:
                if pool not in self.pools:
                    raise ValueError(f"tasks.{name}.pools: no pool named {pool!r}")
            if task.queue not in self.task_queues:
                raise ValueError(f"tasks.{name}.queue: no task_queues entry {task.queue!r}")
        if "ackley" not in self.tasks:
            raise ValueError("tasks: needs an 'ackley' entry")
        if self.reprioritize_endpoint not in ("local", "pool"):
            raise ValueError("reprioritize_endpoint: expected 'local' or 'pool'")
        if self.reprioritize_endpoint == "pool" and "gpr" not in self.tasks:
            raise ValueError("reprioritize_endpoint 'pool' needs a 'gpr' entry in tasks")
        return self

    def db_url(self, name: str) -> str | None:
        db = self.dbs.get(name)
        if db is None:
            raise ConfigError(f"no dbs entry named {name!r}")
        return db.url if db.type == "url" else None


def substitute(value: Any, variables: dict[str, str], where: str) -> Any:
    if isinstance(value, str):
        def repl(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return variables[name]
            if name in os.environ:
                return os.environ[name]
            raise ConfigError(f"{where}: ${{{name}}} is not set (environment or variables:)")
        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {k: substitute(v, variables, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def load_workflow_config(path: str | Path) -> WorkflowConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    variables = {k: str(v) for k, v in (raw.get("variables") or {}).items()}
    raw = {k: (substitute(v, variables, f"{path}: {k}") if k != "variables" else v) for k, v in raw.items()}
    try:
        return WorkflowConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:8]:
            key = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            shown = err["type"] != "missing" and not isinstance(err.get("input"), dict)
            got = f" (got {err['input']!r})" if shown else ""
            problems.append(f"{key}: {message}{got}" if key else message)
        raise ConfigError(f"{path}: " + "; ".join(problems)) from None
