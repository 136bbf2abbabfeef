"""Large objects by reference: ProxyStore proxies, carried in text payloads.

A proxy pickles to a few hundred bytes whatever its target's size; the target lives in the
store (a shared file system locally, Redis, or Globus transfer), and is fetched when used.
"""

from __future__ import annotations

import base64
import pickle
from typing import Any


def make_store(kind: str = "file", path: str = "out/proxystore", hostname: str | None = None,
               port: int | None = None, name: str = "eqflow") -> Any:
    from proxystore.store import Store, get_store

    existing = get_store(name)
    if existing is not None:
        return existing
    if kind == "file":
        from proxystore.connectors.file import FileConnector

        connector: Any = FileConnector(path)
    elif kind == "redis":
        try:
            import redis  # noqa: F401 - ProxyStore's RedisConnector needs it
        except ImportError:
            from eqflow.errors import ConfigError

            raise ConfigError("proxystore type redis needs the redis client: pip install 'eqflow[redis]'") from None
        from proxystore.connectors.redis import RedisConnector

        connector = RedisConnector(hostname or "localhost", port or 6379)
    elif kind == "globus":
        import json

        from proxystore.connectors.globus import GlobusConnector

        with open(path) as handle:  # the endpoints map (uuid, host pattern, paths), see ProxyStore's docs
            connector = GlobusConnector(endpoints=json.load(handle))
    else:
        raise ValueError(f"unknown proxystore type {kind!r}: expected file, redis or globus")
    return Store(name, connector, register=True)


def to_text(proxy: Any) -> str:
    """A proxy as text, to put in a task payload or result."""
    return base64.b64encode(pickle.dumps(proxy)).decode("ascii")


def from_text(text: str) -> Any:
    """The proxy back (its target is fetched on first use)."""
    return pickle.loads(base64.b64decode(text.encode("ascii")))  # noqa: S301 - our own payloads
