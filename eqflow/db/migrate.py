"""Creates or upgrades the schema from the numbered files in ``sql/migrations``."""

from __future__ import annotations

import logging

import psycopg

from eqflow.db.sqlfiles import migrations, query

log = logging.getLogger(__name__)

_LOCK_KEY = 0x6571666C6F77  # "eqflow": serialises concurrent `db init` runs

def current_version(conn: psycopg.Connection) -> int:
    if not _has_version_table(conn):
        return 0
    row = conn.execute(query("schema_version")).fetchone()
    return int(row[0]) if row else 0


def _has_version_table(conn: psycopg.Connection) -> bool:
    row = conn.execute(query("schema_version_table_exists")).fetchone()
    return bool(row and row[0])


def upgrade(url: str) -> list[int]:
    """Apply every migration not yet applied, each in its own transaction. Idempotent.

    Returns the versions applied by this call.
    """
    applied: list[int] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query("advisory_lock"), {"key": _LOCK_KEY})
        try:
            conn.execute(query("schema_version_table"))
            have = current_version(conn)
            for migration in migrations():
                if migration.version <= have:
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)  # trusted text from sql/migrations
                    conn.execute(query("record_migration"), {"version": migration.version, "name": migration.name})
                log.info("schema migrated", extra={"version": migration.version, "migration": migration.name})
                applied.append(migration.version)
        finally:
            conn.execute(query("advisory_unlock"), {"key": _LOCK_KEY})
    return applied


def latest_version() -> int:
    return migrations()[-1].version
