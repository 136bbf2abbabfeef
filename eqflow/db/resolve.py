"""Which database to use: an explicit URL, ``$EQFLOW_DB_URL``, or the embedded cluster."""

from __future__ import annotations

import os
from pathlib import Path

from eqflow.errors import ConfigError

ENV_URL = "EQFLOW_DB_URL"


def resolve_url(url: str | None = None, *, home: Path | str | None = None, migrate: bool = True) -> str:
    """The database URL to connect to, starting the embedded cluster when none is configured.

    ``url`` may be ``None``/``"embedded"`` (use ``$EQFLOW_DB_URL`` if set, else the embedded
    cluster) or a ``postgresql://`` URL. With ``migrate`` the schema is brought up to date.
    """
    chosen = url if url not in (None, "", "embedded") else os.environ.get(ENV_URL)
    if chosen:
        _check_conninfo(chosen)
    else:
        from eqflow.db.embedded import EmbeddedPostgres

        chosen = EmbeddedPostgres(home).ensure_running()
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
