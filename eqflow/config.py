"""Workflow configuration: the EMEWS YAML shape, validated into typed models.

``${var}`` is replaced from the environment (and from ``variables:`` in the file) before
validation. Every problem is reported at once, each as ``<file>: <key.path>: <what is wrong>``,
with a "did you mean" for mistyped keys, choices and names that refer to another section.
The reference of every key (``docs/config.md``) is generated from these models by
``eqflow config docs``; ``eqflow config check FILE`` validates a file.
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic.fields import FieldInfo

from eqflow.errors import ConfigError
from eqflow.funsearch.scaling import ScalingSettings

_VAR = re.compile(r"\$\{(\w+)\}")
_SECRET_KEYS = {"url", "token", "db"}  # never echoed back in an error (passwords)


class ConfigFileError(ConfigError):
    """A config broke one or more rules. ``problems``: "key.path: what is wrong", one each."""

    def __init__(self, problems: list[str], path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.problems = problems
        prefix = "" if path is None else f"{path}: "
        super().__init__("\n".join(prefix + problem for problem in problems))


def suggest(name: object, choices: Iterable[str], *, listing: bool = True) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, else (``listing``) the choices."""
    options = sorted({str(c) for c in choices})
    close = difflib.get_close_matches(str(name), options, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    if not listing:
        return ""
    if not options:
        return " (there are none)"
    shown = ", ".join(options[:12]) + (", ..." if len(options) > 12 else "")
    return f" (expected one of: {shown})"


def _choices(values: Iterable[object]) -> str:
    names = [str(v) for v in values]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _is_url(value: str) -> bool:
    """A postgresql:// URL or a libpq ``key=value`` string, as opposed to a ``dbs:`` name."""
    return "://" in value or "=" in value


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- dbs ---------------------------------------------------------------------------------


class DbConfig(Model):
    """A database: an entry of ``dbs:``, named by ``task_queues.<name>.db``."""

    type: Literal["embedded", "url"] = Field(
        default="embedded", description="embedded: eqflow's own PostgreSQL cluster (or $EQFLOW_DB_URL when set); "
                                        "url: the server at `url`")
    url: str | None = Field(default=None, description="postgresql:// URL or libpq key=value string (type url)")
    start: str | None = Field(default=None, description="shell command run before the workflow, e.g. "
                                                        "`eqflow db start --home DIR`; a failure stops the run")
    stop: str | None = Field(default=None,
                             description="shell command run after the workflow, e.g. `eqflow db stop --home DIR`")

    @model_validator(mode="after")
    def _url_for_url(self) -> DbConfig:
        if self.type == "url" and not self.url:
            raise ValueError("type url needs url")
        if self.url and "://" in self.url and not self.url.startswith(("postgresql://", "postgres://")):
            raise ValueError("url: expected a postgresql:// URL")
        return self


# --- task_queues -------------------------------------------------------------------------


class TunnelConfig(Model):
    """An SSH port forward (like ``ssh -L``) to the EMEWS service, opened by the workflow."""

    host: str = Field(description="SSH host, or a Host alias from ssh_config")
    remote_port: int = Field(ge=1, le=65535, description="the service's port on the far side")
    user: str | None = Field(default=None, description="SSH user (default: ssh_config's User, else $USER)")
    port: int | None = Field(default=None, ge=1, le=65535, description="SSH port (default: ssh_config's Port, else 22)")
    key_filename: str | None = Field(default=None, description="private key file (default: ssh_config's IdentityFile, "
                                                               "else the usual keys)")
    ssh_config: str | None = Field(default=None, description="ssh_config file that host aliases are read from, "
                                                             "e.g. ~/.ssh/config")
    known_hosts: str | None = Field(default=None, description="known_hosts file (default: ~/.ssh/known_hosts)")
    accept_unknown_host: bool = Field(default=False, description="accept a host key not in known_hosts "
                                                                 "(otherwise the connection is refused)")
    remote_host: str = Field(default="127.0.0.1", description="where the service listens, as seen from the SSH host")
    local_port: int = Field(default=0, ge=0, le=65535, description="local end of the forward (0: any free port)")

    @model_validator(mode="before")
    @classmethod
    def _host_and_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and not {"host", "remote_port"} <= set(data):
            raise ValueError("needs at least host and remote_port")
        return data


class LocalQueueConfig(Model):
    """A task queue straight on PostgreSQL: the workflow connects to the database itself."""

    type: Literal["local"] = Field(description="local: straight to the database")
    db: str | None = Field(default="main", description="a dbs: name, a postgresql:// URL, or null "
                                                       "($EQFLOW_DB_URL, else the embedded database)")
    lease_s: float = Field(default=60.0, gt=0, description="seconds a claimed task stays leased without a heartbeat")
    safety_poll_s: float = Field(default=5.0, gt=0, description="seconds between polls when no notification comes")
    pool_size: int = Field(default=4, ge=1, description="database connections the queue keeps")


class ServiceQueueConfig(Model):
    """A task queue through the EMEWS REST service (``eqflow service start``), by URL or SSH tunnel."""

    type: Literal["service"] = Field(description="service: through the EMEWS REST service")
    url: str | None = Field(default=None, description="the service's base URL, e.g. http://127.0.0.1:8765 "
                                                      "(or give tunnel)")
    token: str | None = Field(default=None, description="bearer token (default: $EQFLOW_SERVICE_TOKEN)")
    tunnel: TunnelConfig | None = Field(default=None,
                                        description="reach the service through an SSH tunnel instead of url")
    retry_timeout: float = Field(default=60.0, gt=0,
                                 description="seconds to keep retrying while the service is unreachable")

    @model_validator(mode="after")
    def _url_or_tunnel(self) -> ServiceQueueConfig:
        if self.url is None and self.tunnel is None:
            raise ValueError("a service queue needs url or tunnel")
        return self


class GlobusQueueConfig(Model):
    """A task queue whose operations run on a Globus Compute endpoint next to the database."""

    type: Literal["globus"] = Field(description="globus: through a Globus Compute endpoint")
    endpoint: str | None = Field(default=None, description="the endpoint: a gc_endpoints: name or an endpoint UUID "
                                                           "(required in a workflow config)")
    db: str | None = Field(default=None, description="the database as seen from the endpoint: a dbs: name, a "
                                                     "postgresql:// URL, or null (the endpoint's $EQFLOW_DB_URL, "
                                                     "else its embedded database)")


TaskQueueConfig = Annotated[LocalQueueConfig | ServiceQueueConfig | GlobusQueueConfig, Field(discriminator="type")]
TASK_QUEUE_MODELS = (LocalQueueConfig, ServiceQueueConfig, GlobusQueueConfig)


# --- pools, tasks and the rest -------------------------------------------------------------


class PoolConfig(Model):
    """A worker pool the workflow starts: an entry of ``pools:``, named by ``tasks.<name>.pools``."""

    type: Literal["local", "slurm", "pbs", "globus"] = Field(
        default="local", description="local: a process here; slurm/pbs: a batch job submitted from here; globus: a "
                                     "batch job submitted on a remote login node through gc_endpoint")
    fn: str | None = Field(default=None, description="task function, module:function (payload str in, result str out)")
    cmd: str | None = Field(default=None,
                            description="or a shell command template with {payload}, {payload_file}, {task_id}")
    workers: int = Field(default=1, ge=1, description="tasks run at once")
    threads: bool = Field(default=False, description="run tasks in threads of the pool process instead of worker "
                                                     "processes (I/O-bound work; a batching LLM sampler)")
    batch_size: int = Field(default=0, ge=0, description="most tasks in hand (0: workers)")
    threshold: int = Field(default=1, ge=1, description="free worker slots before the pool claims more")
    nodes: int = Field(default=1, ge=1, description="nodes per batch job (slurm, pbs, globus)")
    ppn: int = Field(default=1, ge=1, description="processes (cores) per node (slurm, pbs, globus)")
    walltime: str = Field(default="01:00:00", pattern=r"^\d+(-\d+)?(:\d{2}){0,2}$",
                          description="batch job time limit, [D-]HH:MM:SS (slurm, pbs, globus)")
    queue: str | None = Field(default=None, description="SLURM partition / PBS queue (default: the scheduler's)")
    project: str | None = Field(default=None, description="SLURM account / PBS project to charge")
    setup: list[str] = Field(default_factory=list, description="lines run before the pool in a job script, "
                                                               "e.g. 'module load python'")
    idle_exit: float | None = Field(default=300.0, gt=0,
                                    description="seconds idle before the pool exits (an orphan after "
                                                "a crash too); null: never")
    gc_endpoint: str | None = Field(default=None, description="gc_endpoints: name of the endpoint that submits the job "
                                                              "(type globus)")
    remote_launcher: Literal["slurm", "pbs"] = Field(default="slurm",
                                                     description="the scheduler on the globus endpoint's "
                                                                 "side (type globus)")

    @model_validator(mode="after")
    def _one_task(self) -> PoolConfig:
        if (self.fn is None) == (self.cmd is None):
            raise ValueError("give exactly one of fn or cmd")
        if self.fn is not None and not re.fullmatch(r"[\w.]+:\w+", self.fn):
            raise ValueError(f"fn: expected module:function, got {self.fn!r}")
        return self


class TaskConfig(Model):
    """A task type the workflow submits: an entry of ``tasks:`` (ackley, gpr)."""

    type: int = Field(ge=0, description="task type id (what pools claim)")
    pools: list[str] = Field(min_length=1, description="pools: names that run it (the first is started first)")
    queue: str = Field(default="local", description="task_queues: name it is submitted through")


class ProxyStoreConfig(Model):
    """Where large task data (the GP's training data and model) is passed by reference."""

    type: Literal["file", "redis", "globus"] = Field(
        default="file", description="file: a shared folder; redis: a Redis server; globus: Globus transfer")
    path: str = Field(default="out/proxystore", description="the folder (file), or the endpoints JSON map (globus)")
    hostname: str = Field(default="localhost", description="Redis host (redis)")
    port: int = Field(default=6379, ge=1, le=65535, description="Redis port (redis)")


class ScalingConfigModel(Model):
    """Dynamic scaling: pools started and stopped from queue depth and free resources."""

    dynamic: bool = Field(default=False, description="scale dynamically (or use extra_pools_after_retrain); "
                                                     "--dynamic-scaling overrides")
    check_interval: float = Field(default=5.0, gt=0, description="seconds between scaling decisions")
    max_pools: int = Field(default=3, ge=1, description="most pools per task type")
    cpu_usage_threshold: float = Field(default=90.0, gt=0, le=100,
                                       description="no new pool above this CPU use, percent")
    normalized_load_threshold: float = Field(default=1.5, gt=0,
                                             description="no new pool above this 1-minute load per core")
    min_system_memory_gib: float = Field(default=1.0, ge=0, description="no new pool with less free memory, GiB")


REFERENCES = [  # checked by WorkflowConfig.reference_problems; listed in docs/config.md
    ("tasks.<name>.pools[]", "pools", ""),
    ("tasks.<name>.queue", "task_queues", ""),
    ("task_queues.<name>.db", "dbs", "or a postgresql:// URL, or null"),
    ("task_queues.<name>.endpoint", "gc_endpoints", "or an endpoint UUID"),
    ("pools.<name>.gc_endpoint", "gc_endpoints", ""),
]


class FunSearchConfig(Model):
    """``funsearch:``: the FunSearch model exploration (``eqflow funsearch run``). Its tasks are
    ``tasks.sample`` and ``tasks.evaluate``; evaluations outrank samples."""

    spec: str = Field(default="deletion_codes", description="the problem: a bundled spec (deletion_codes, cap_set) "
                                                            "or a path to a spec .py file")
    tests: list[dict[str, Any]] | None = Field(default=None, description="inputs the run function is called with, "
                                               "e.g. [{n: 6, s: 1}] (default: the spec's DEFAULT_TESTS)")
    targets: list[float] | None = Field(default=None, description="stop when every test reaches its target, one per "
                                        "test (default: the spec's TARGETS; none known: no target)")
    optimal_solution_programs: int = Field(default=20, ge=0, description="programs registered after the targets "
                                                                         "are reached, then stop")
    reduce: Literal["last", "average", "weighted"] = Field(default="last", description="how per-test scores combine "
                                                           "into a program's score (the spec says what each means)")
    sampler: dict[str, Any] = Field(default_factory=lambda: {"type": "mutation"},
                                    description="the sampler: {type: mutation | transformers | openai, ...options}")
    samples_per_prompt: int = Field(default=2, ge=1, le=64, description="candidates per sample task")
    functions_per_prompt: int = Field(default=2, ge=1, le=8, description="parent programs shown in a prompt")
    num_islands: int = Field(default=10, ge=1, le=1000, description="islands of the programs database")
    cluster_temperature_init: float = Field(default=0.1, gt=0, description="T0 of the cluster softmax")
    cluster_temperature_period: int = Field(default=30_000, ge=1, description="P of the cluster softmax")
    reset_period_s: float | None = Field(default=4 * 3600.0, gt=0, description="reset the weaker half of the "
                                         "islands this often (null: never by time)")
    reset_programs: int | None = Field(default=None, ge=1, description="reset when every island holds at least "
                                       "this many programs (null: never by size)")
    max_evaluations: int | None = Field(default=None, ge=1, description="stop after this many evaluations")
    max_seconds: float | None = Field(default=None, gt=0, description="stop after this many seconds of this session")
    eval_timeout_s: float = Field(default=30.0, gt=0, description="wall seconds one evaluation may take")
    eval_memory_mb: int = Field(default=1024, ge=64, description="memory one evaluation may use, MiB")
    in_flight_per_slot: int = Field(default=2, ge=1, le=64, description="tasks in flight per live sampler or "
                                    "evaluator slot (the cap on work in flight)")
    scaling: ScalingSettings = Field(default_factory=ScalingSettings,
                                     description="dynamic scaling of samplers and evaluators (the reference's rules)")
    selection: Literal["funsearch", "hill_climb", "random"] = Field(
        default="funsearch", description="how parents are chosen: funsearch (clusters, temperature), hill_climb "
                                         "(each island's best), random (always the spec's own function: random "
                                         "search); the last two are baselines for benchmarks")


def _default_dbs() -> dict[str, DbConfig]:
    return {"main": DbConfig.model_validate({})}


def _default_task_queues() -> dict[str, LocalQueueConfig | ServiceQueueConfig | GlobusQueueConfig]:
    return {"local": LocalQueueConfig(type="local", db="main")}


class WorkflowConfig(Model):
    """The workflow config file (``run.py EXP_ID FILE``): the top-level keys."""

    dbs: dict[str, DbConfig] = Field(default_factory=_default_dbs,
                                     description="databases by name (default: main, embedded)")
    task_queues: dict[str, TaskQueueConfig] = Field(
        default_factory=_default_task_queues,
        description="task queues by name, each of type local, service or globus (default: local, on dbs main)")
    pools: dict[str, PoolConfig] = Field(description="worker pools by name")
    tasks: dict[str, TaskConfig] = Field(description="task types by name: ackley (required) and gpr "
                                                     "(for reprioritize_endpoint pool)")
    gc_endpoints: dict[str, str] = Field(default_factory=dict, description="Globus Compute endpoint UUIDs by name")
    proxystore: ProxyStoreConfig = Field(default_factory=ProxyStoreConfig, description="large data by reference")
    reprioritize_endpoint: Literal["local", "pool"] = Field(
        default="local", description="where the GP is retrained: local (in the workflow) or pool (as a gpr task)")
    scaling: ScalingConfigModel = Field(default_factory=ScalingConfigModel, description="dynamic pool scaling")
    variables: dict[str, str] = Field(default_factory=dict, description="values for ${name} in the file "
                                                                        "(before the environment's)")
    # the Ackley/GPR model exploration
    search_space_size: int = Field(default=750, ge=1, description="points sampled")
    sample_dimensions: int = Field(default=4, ge=1, description="dimensions of each point")
    runtime: float = Field(default=0.5, ge=0, description="median seconds an Ackley task sleeps (lognormal)")
    runtime_var: float = Field(default=0.1, ge=0, description="sigma of the lognormal sleep")
    num_guesses: int = Field(default=100, ge=1, description="stop after this many results")
    retrain_after: int = Field(default=50, ge=1,
                               description="retrain the GP and reprioritize after every this many results")
    acquisition: Literal["mean", "ucb", "ei"] = Field(
        default="mean", description="priority from the GP: mean (lowest predicted), ucb (confidence bound), "
                                    "ei (expected improvement)")
    extra_pools_after_retrain: list[int] = Field(default_factory=lambda: [2, 4],
                                                 description="start one more Ackley pool after these retrains "
                                                             "(without dynamic scaling)")
    output_dir: str = Field(default="out", description="outputs go to `<output_dir>/<exp_id>/`")
    seed: int = Field(default=0, description="random seed of the sample and the sleeps")
    funsearch: FunSearchConfig | None = Field(default=None, description="the FunSearch exploration "
                                                                        "(eqflow funsearch run)")

    @model_validator(mode="after")
    def _references(self) -> WorkflowConfig:
        problems = self.reference_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def reference_problems(self) -> list[str]:
        """Every name that refers to another section but names nothing there."""
        problems = self._task_references() + self._queue_references() + self._pool_references()
        if self.funsearch is not None:
            problems += [f"tasks: needs a {name!r} entry for funsearch{suggest(name, self.tasks, listing=False)}"
                         for name in ("sample", "evaluate") if name not in self.tasks]
        elif "ackley" not in self.tasks:
            problems.append(f"tasks: needs an 'ackley' entry{suggest('ackley', self.tasks, listing=False)}")
        if self.reprioritize_endpoint == "pool" and "gpr" not in self.tasks:
            problems.append("reprioritize_endpoint: 'pool' needs a 'gpr' entry in tasks")
        return problems

    def _task_references(self) -> list[str]:
        problems = []
        for name, task in self.tasks.items():
            for pool_name in task.pools:
                if pool_name not in self.pools:
                    problems.append(f"tasks.{name}.pools: no pool named {pool_name!r}"
                                    f"{suggest(pool_name, self.pools)}")
            if task.queue not in self.task_queues:
                problems.append(f"tasks.{name}.queue: no task_queues entry named {task.queue!r}"
                                f"{suggest(task.queue, self.task_queues)}")
        return problems

    def _queue_references(self) -> list[str]:
        problems = []
        for name, queue in self.task_queues.items():
            if isinstance(queue, LocalQueueConfig | GlobusQueueConfig):
                db = queue.db
                if db is not None and db != "embedded" and db not in self.dbs and not _is_url(db):
                    problems.append(f"task_queues.{name}.db: no dbs entry named {db!r}{suggest(db, self.dbs)}")
            if not isinstance(queue, GlobusQueueConfig):
                continue
            if queue.endpoint is None:
                problems.append(f"task_queues.{name}.endpoint: a globus queue needs endpoint "
                                "(a gc_endpoints name or an endpoint UUID)")
            elif queue.endpoint not in self.gc_endpoints and not _looks_like_uuid(queue.endpoint):
                problems.append(f"task_queues.{name}.endpoint: no gc_endpoints entry named {queue.endpoint!r}"
                                f"{suggest(queue.endpoint, self.gc_endpoints)}")
        return problems

    def _pool_references(self) -> list[str]:
        problems = []
        for name, pool in self.pools.items():
            if pool.gc_endpoint is not None and pool.gc_endpoint not in self.gc_endpoints:
                problems.append(f"pools.{name}.gc_endpoint: no gc_endpoints entry named {pool.gc_endpoint!r}"
                                f"{suggest(pool.gc_endpoint, self.gc_endpoints)}")
            elif pool.type == "globus" and pool.gc_endpoint is None:
                problems.append(f"pools.{name}.gc_endpoint: a globus pool needs gc_endpoint "
                                f"(a gc_endpoints name){suggest('', self.gc_endpoints)}")
        return problems

    def db_url(self, name: str) -> str | None:
        db = self.dbs.get(name)
        if db is None:
            raise ConfigError(f"no dbs entry named {name!r}{suggest(name, self.dbs)}")
        return db.url if db.type == "url" else None

    def resolved_task_queue(self, name: str) -> LocalQueueConfig | ServiceQueueConfig | GlobusQueueConfig:
        """``task_queues.<name>`` with its names resolved: ``db`` a dbs: name -> that database's URL
        (None: embedded), ``endpoint`` a gc_endpoints: name -> its UUID. Ready for make_task_queue."""
        queue = self.task_queues.get(name)
        if queue is None:
            raise ConfigError(f"no task_queues entry named {name!r}{suggest(name, self.task_queues)}")
        update: dict[str, Any] = {}
        if isinstance(queue, LocalQueueConfig | GlobusQueueConfig) and queue.db in self.dbs:
            update["db"] = self.db_url(queue.db)
        if isinstance(queue, GlobusQueueConfig) and queue.endpoint in self.gc_endpoints:
            update["endpoint"] = self.gc_endpoints[queue.endpoint]
        return queue.model_copy(update=update)


def _looks_like_uuid(value: str) -> bool:
    return re.fullmatch(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", value) is not None


# --- checking raw data against the models, with suggestions --------------------------------


def unwrap_annotation(tp: Any) -> tuple[Any, str | None]:
    """``Annotated[X, Field(discriminator=...)]`` -> (X, the discriminator); else (tp, None)."""
    discriminator = None
    if get_origin(tp) is Annotated:
        tp, *meta = get_args(tp)
        for item in meta:
            if isinstance(item, FieldInfo) and isinstance(item.discriminator, str):
                discriminator = item.discriminator
    return tp, discriminator


def _key(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def shape_problems(value: Any, tp: Any, path: list[str | int]) -> list[str]:
    """Unknown keys and values outside a fixed set of choices, at any depth of ``value`` read as
    ``tp``, each with a suggestion. Type and range errors are left to pydantic."""
    tp, discriminator = unwrap_annotation(tp)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return _union_problems(value, tp, discriminator, path)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            return [f"{_key(path)}: expected {_choices(choices)}, got {value!r}"
                    f"{suggest(value, [str(c) for c in choices], listing=False)}"]
        return []
    if origin is dict and isinstance(value, dict):
        item_type = get_args(tp)[1]
        return [p for k, v in value.items() for p in shape_problems(v, item_type, [*path, str(k)])]
    if origin is list and isinstance(value, list):
        item_type = get_args(tp)[0]
        return [p for i, v in enumerate(value) for p in shape_problems(v, item_type, [*path, i])]
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(value, dict):
        fields = tp.model_fields
        problems = []
        for key, item in value.items():
            if key in fields:
                problems += shape_problems(item, fields[key].annotation, [*path, key])
            else:
                problems.append(f"{_key([*path, str(key)])}: unknown key{suggest(key, fields)}")
        return problems
    return []


def _union_problems(value: Any, tp: Any, discriminator: str | None, path: list[str | int]) -> list[str]:
    members = [m for m in get_args(tp) if m is not type(None)]
    if value is None:
        return []
    if discriminator is not None and isinstance(value, dict):
        tags = {get_args(m.model_fields[discriminator].annotation)[0]: m for m in members}
        tag = value.get(discriminator)
        where = _key([*path, discriminator])
        if tag is None:
            return [f"{where}: missing; expected {_choices(tags)}"]
        if tag not in tags:
            return [f"{where}: expected {_choices(tags)}, got {tag!r}{suggest(tag, tags, listing=False)}"]
        return shape_problems(value, tags[tag], path)
    return shape_problems(value, members[0], path) if len(members) == 1 else []


_SHAPE_ERRORS = {"extra_forbidden", "literal_error", "union_tag_invalid", "union_tag_not_found"}


def _pydantic_problems(exc: ValidationError, data: Any, prefix: list[str | int], skip_shape: bool) -> list[str]:
    problems = []
    for err in exc.errors():
        if skip_shape and err["type"] in _SHAPE_ERRORS:
            continue
        path, node = list(prefix), data
        for part in err["loc"]:
            if isinstance(node, dict) and part not in node and node.get("type") == part:
                continue  # a discriminated union's tag, not a key of the file
            path.append(part)
            node = _child(node, part)
        message = err["msg"].removeprefix("Value error, ")
        shown = (err["type"] != "missing" and not isinstance(err.get("input"), dict | list)
                 and not (path and path[-1] in _SECRET_KEYS))
        got = f" (got {err['input']!r})" if shown else ""
        for line in message.split("\n"):
            if re.match(r"^[\w.\[\]]+: ", line) and not err["loc"]:
                problems.append(line)  # a cross-reference problem names its own key
            else:
                problems.append(f"{_key(path)}: {line}{got}" if path else f"{line}{got}")
    return problems


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def validate_data(data: Any, tp: Any, prefix: list[str | int], path: str | Path | None = None) -> Any:
    """``data`` validated as ``tp``; or a ConfigFileError listing every problem found."""
    shape = shape_problems(data, tp, prefix)
    try:
        result = TypeAdapter(tp).validate_python(data)
    except ValidationError as exc:
        problems = shape + _pydantic_problems(exc, data, prefix, skip_shape=bool(shape))
        raise ConfigFileError(problems or _pydantic_problems(exc, data, prefix, False), path) from None
    if shape:  # pydantic accepted what the shape check refused: refuse anyway
        raise ConfigFileError(shape, path)
    return result


def parse_task_queue(name: str, entry: Mapping[str, Any]) -> LocalQueueConfig | ServiceQueueConfig | GlobusQueueConfig:
    """One ``task_queues:`` entry (a dict, e.g. ``model.model_dump()``) validated on its own.
    Here a missing ``db`` means null ($EQFLOW_DB_URL or embedded) rather than dbs main."""
    data = {k: (v.model_dump() if isinstance(v, BaseModel) else v) for k, v in entry.items()}
    if data.get("type") in ("local", "globus"):
        data.setdefault("db", None)
    result: LocalQueueConfig | ServiceQueueConfig | GlobusQueueConfig = validate_data(
        data, TaskQueueConfig, ["task_queues", name])
    return result


# --- loading -------------------------------------------------------------------------------


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
    """The workflow config in ``path``; a ConfigFileError (a ConfigError) naming the file and
    every problem's key otherwise. Nothing is started or written."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    variables = raw.get("variables") or {}
    if not isinstance(variables, dict):
        raise ConfigFileError(["variables: expected a mapping of name: value"], path)
    variables = {str(k): str(v) for k, v in variables.items()}
    raw = {k: (substitute(v, variables, f"{path}: {k}") if k != "variables" else variables) for k, v in raw.items()}
    config: WorkflowConfig = validate_data(raw, WorkflowConfig, [], path)
    return config
