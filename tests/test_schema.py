import psycopg
import pytest

from eqflow.db.migrate import latest_version, upgrade
from eqflow.db.sqlfiles import migrations, queries
from tests.conftest import sql


def test_upgrade_is_idempotent_and_records_the_version(db_url):
    assert upgrade(db_url) == []  # the template is already current
    rows = sql(db_url, "SELECT version, name FROM eqflow_schema_version ORDER BY version")
    assert [r[0] for r in rows] == [m.version for m in migrations()]
    assert rows[-1][0] == latest_version()


def test_fresh_database_is_migrated_from_nothing(admin_url):
    name = "eqflow_test_fresh"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    try:
        assert upgrade(url) == [m.version for m in migrations()]
        tables = {r[0] for r in sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"experiments", "tasks", "pools", "eqflow_schema_version"} <= tables
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_every_named_query_prepares(db_url):
    """Each statement in sql/queries.sql parses and plans against the schema."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        for name, text in queries().items():
            body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--")).strip()
            if body.split()[0].upper() in ("CREATE", "DROP", "TRUNCATE", "VACUUM", "ANALYZE", "ALTER"):
                continue  # utility statements cannot be prepared; migrate, embedded and bench run them
            if name.startswith("peer_"):
                continue  # sql/bench.sql: on the peers' own tables (EQ-SQL, PgQueuer, pgbench)
            conn.execute("BEGIN")
            try:
                # PREPARE checks names and types without running anything.
                conn.execute(f"PREPARE check_{name} AS {_positional(text)}")
            finally:
                conn.execute("ROLLBACK")


def _positional(text: str) -> str:
    """Turn %(name)s placeholders (and %(name)b, binary) into $n for PREPARE."""
    import re

    names: list[str] = []

    def repl(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)[sbt]", repl, text).replace("%%", "%")


def test_state_machine_is_enforced_by_the_schema(db_url):
    with pytest.raises(psycopg.errors.CheckViolation):
        sql(db_url, "INSERT INTO tasks (exp_id, task_type, payload, status) VALUES ('e', 1, 'p', 'complete')")
    with pytest.raises(psycopg.errors.CheckViolation):
        sql(db_url, "INSERT INTO tasks (exp_id, task_type, payload, status) VALUES ('e', 1, 'p', 'running')")
