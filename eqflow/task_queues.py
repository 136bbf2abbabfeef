"""Pick a task-queue transport from a config entry, as in the EMEWS configs' ``task_queues:``.

    task_queues:
      local_q:   {type: local, db: embedded}                        # or a postgresql:// URL
      remote_q:  {type: service, url: http://127.0.0.1:8765, token: ${EQFLOW_SERVICE_TOKEN}}
      tunnel_q:  {type: service, token: ..., tunnel: {host: login1, remote_port: 8765,
                                                       ssh_config: ~/.ssh/config}}
      gc_q:      {type: globus, endpoint: <endpoint uuid>, db: null}
"""

from __future__ import annotations

from typing import Any

from eqflow.errors import ConfigError

_KEYS = {
    "local": {"type", "db", "lease_s", "safety_poll_s", "pool_size"},
    "service": {"type", "url", "token", "tunnel", "retry_timeout"},
    "globus": {"type", "endpoint", "db", "executor"},
}
_TUNNEL_KEYS = {"host", "remote_port", "user", "port", "key_filename", "ssh_config", "known_hosts",
                "accept_unknown_host", "remote_host", "local_port"}


def make_task_queue(name: str, entry: dict[str, Any]) -> Any:
    """The queue an entry of ``task_queues:`` describes. ``executor`` (globus) may be given as an
    object to stand in for Globus Compute; otherwise ``globus_compute_sdk`` must be installed."""
    kind = entry.get("type")
    if kind not in _KEYS:
        raise ConfigError(f"task_queues.{name}.type: expected local, service or globus, got {kind!r}")
    unknown = set(entry) - _KEYS[kind]
    if unknown:
        raise ConfigError(f"task_queues.{name}: unknown key(s) {sorted(unknown)} for type {kind}")
    if kind == "local":
        from eqflow.queue import LocalTaskQueue

        options = {k: entry[k] for k in ("lease_s", "safety_poll_s", "pool_size") if k in entry}
        return LocalTaskQueue(entry.get("db"), **options)
    if kind == "service":
        from eqflow.service_queue import ServiceTaskQueue
        from eqflow.tunnel import SSHTunnel

        tunnel = None
        if "tunnel" in entry:
            spec = entry["tunnel"]
            if not isinstance(spec, dict) or "host" not in spec or "remote_port" not in spec:
                raise ConfigError(f"task_queues.{name}.tunnel: needs at least host and remote_port")
            if set(spec) - _TUNNEL_KEYS:
                raise ConfigError(f"task_queues.{name}.tunnel: unknown key(s) {sorted(set(spec) - _TUNNEL_KEYS)}")
            tunnel = SSHTunnel(**spec)
        elif "url" not in entry:
            raise ConfigError(f"task_queues.{name}: a service queue needs url or tunnel")
        return ServiceTaskQueue(entry.get("url"), entry.get("token"), tunnel=tunnel,
                                retry_timeout=float(entry.get("retry_timeout", 60.0)))
    from eqflow.gc_queue import GCTaskQueue

    executor = entry.get("executor")
    if executor is None:
        if "endpoint" not in entry:
            raise ConfigError(f"task_queues.{name}: a globus queue needs endpoint")
        try:
            from globus_compute_sdk import Executor  # type: ignore[import-not-found]
        except ImportError:
            raise ConfigError("type globus needs globus-compute-sdk (pip install globus-compute-sdk)") from None
        executor = Executor(endpoint_id=entry["endpoint"])
    return GCTaskQueue(executor, entry.get("db"))
