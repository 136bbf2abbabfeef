"""Which database to use: an explicit URL, ``$EQFLOW_DB_URL``, or the embedded cluster."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from eqflow.errors import ConfigError

ENV_URL = "EQFLOW_DB_URL"


def resolve_url(url: str | None = None, *, home: Path | str | None = None, migrate: bool = True,
                create: bool = True, announce: Callable[[str], None] | None = None) -> str:
    """The database URL to connect to, starting the embedded cluster when none is configured.

    ``url`` may be ``None``/``"embedded"`` (use ``$EQFLOW_DB_URL`` if set, else the embedded
    cluster) or a ``postgresql://`` URL. With ``migrate`` the schema is brought up to date.
    ``create=False`` (read-only commands) never creates or starts a cluster: no database is an
    error that says how to get one. ``announce`` is told when a cluster was created or started.
    """
    chosen = url if url not in (None, "", "embedded") else os.environ.get(ENV_URL)
    if chosen:
        _check_conninfo(chosen)
    else:
        from eqflow.db.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(home)
        if not create:
            if not embedded.is_running():
                where = "is stopped" if embedded.status()["exists"] else "does not exist"
                raise ConfigError(f"no database: ${ENV_URL} is not set and the embedded cluster at {embedded.home} "
                                  f"{where}; start it with `eqflow db start` or set ${ENV_URL}")
            chosen = embedded.url()
        else:
            chosen = embedded.ensure_running()
            if announce is not None and (line := embedded.announcement()):
                announce(line)
    if migrate:
        from eqflow.db.migrate import upgrade

        upgrade(chosen)
    return chosen


def _check_conninfo(url: str) -> None:
    """Accept a postgresql:// URL or a libpq key=value string; never echo it (passwords)."""
    import psycopg

    if "://" in url and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"database URL must start with postgresql://, got scheme {url.split('://')[0]!r}")
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise ConfigError("database URL is not a valid postgresql:// URL or libpq connection string") from None
