"""Creates or upgrades the schema from the numbered files in ``sql/migrations``."""

from __future__ import annotations

import logging

import psycopg

from eqflow.db.sqlfiles import migrations

log = logging.getLogger(__name__)

_LOCK_KEY = 0x6571666C6F77  # "eqflow": serialises concurrent `db init` runs

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS eqflow_schema_version (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


def current_version(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT coalesce(max(version), 0) FROM eqflow_schema_version"
        if _has_version_table(conn) else "SELECT 0").fetchone()
    return int(row[0]) if row else 0


def _has_version_table(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT to_regclass('eqflow_schema_version') IS NOT NULL").fetchone()
    return bool(row and row[0])


def upgrade(url: str) -> list[int]:
    """Apply every migration not yet applied, each in its own transaction. Idempotent.

    Returns the versions applied by this call.
    """
    applied: list[int] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(_VERSION_TABLE)
            have = current_version(conn)
            for migration in migrations():
                if migration.version <= have:
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)  # trusted text from sql/migrations
                    conn.execute("INSERT INTO eqflow_schema_version (version, name) VALUES (%s, %s)",
                                 (migration.version, migration.name))
                log.info("schema migrated", extra={"version": migration.version, "migration": migration.name})
                applied.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def latest_version() -> int:
    return migrations()[-1].version
