"""Pick a task-queue transport from a config entry, as in the EMEWS configs' ``task_queues:``.

    task_queues:
      local_q:   {type: local, db: main}                            # a dbs: name, or a postgresql:// URL
      remote_q:  {type: service, url: http://127.0.0.1:8765, token: ${EQFLOW_SERVICE_TOKEN}}
      tunnel_q:  {type: service, token: ..., tunnel: {host: login1, remote_port: 8765,
                                                       ssh_config: ~/.ssh/config}}
      gc_q:      {type: globus, endpoint: <gc_endpoints name or uuid>, db: null}

The entries are the typed models of :mod:`eqflow.config` (validated when the file is loaded);
``open_task_queue(cfg, name)`` resolves an entry's names and opens it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from eqflow.config import (
    TASK_QUEUE_MODELS,
    GlobusQueueConfig,
    LocalQueueConfig,
    ServiceQueueConfig,
    parse_task_queue,
)
from eqflow.errors import ConfigError

if TYPE_CHECKING:
    from eqflow.config import WorkflowConfig


def open_task_queue(cfg: WorkflowConfig, name: str, *, announce: Callable[[str], None] | None = None,
                    executor: Any = None) -> Any:
    """The queue ``task_queues.<name>`` of a loaded workflow config describes, with its ``db``
    (a dbs: name) and ``endpoint`` (a gc_endpoints: name) resolved. ``announce`` is told when a
    local queue's embedded database was created or started."""
    spec = cfg.resolved_task_queue(name)
    if isinstance(spec, LocalQueueConfig) and announce is not None:
        from eqflow.db.resolve import resolve_url

        spec = spec.model_copy(update={"db": resolve_url(spec.db, announce=announce)})
    return make_task_queue(name, spec, executor=executor)


def make_task_queue(name: str, entry: Mapping[str, Any] | LocalQueueConfig | ServiceQueueConfig | GlobusQueueConfig,
                    *, executor: Any = None) -> Any:
    """The queue an entry of ``task_queues:`` describes: a model, or its dict form (``db`` a URL
    or None, not a dbs: name). ``executor`` (globus; also accepted as a key of the dict) may be
    given as an object to stand in for Globus Compute; otherwise ``globus_compute_sdk`` must be
    installed (``pip install 'eqflow[globus]'``); see eqflow.globus."""
    if isinstance(entry, TASK_QUEUE_MODELS):
        spec = entry
    else:
        data = dict(entry)
        executor = data.pop("executor", None) if executor is None else executor
        spec = parse_task_queue(name, data)
    if isinstance(spec, LocalQueueConfig):
        from eqflow.queue import LocalTaskQueue

        return LocalTaskQueue(spec.db, lease_s=spec.lease_s, safety_poll_s=spec.safety_poll_s,
                              pool_size=spec.pool_size)
    if isinstance(spec, ServiceQueueConfig):
        from eqflow.service_queue import ServiceTaskQueue
        from eqflow.tunnel import SSHTunnel

        tunnel = SSHTunnel(**spec.tunnel.model_dump()) if spec.tunnel is not None else None
        return ServiceTaskQueue(spec.url, spec.token, tunnel=tunnel, retry_timeout=spec.retry_timeout)
    from eqflow.gc_queue import GCTaskQueue

    if executor is None:
        if spec.endpoint is None:
            raise ConfigError(f"task_queues.{name}.endpoint: a globus queue needs endpoint")
        from eqflow.globus import globus_executor

        try:
            executor = globus_executor(spec.endpoint)
        except ConfigError as exc:
            raise ConfigError(f"task_queues.{name}: {exc}") from exc
    return GCTaskQueue(executor, spec.db)
