"""Tests run against a real private PostgreSQL cluster started once per session.

Each test gets its own database cloned from a migrated template (CREATE DATABASE ...
TEMPLATE), so tests are isolated and cheap. Set EQFLOW_TEST_DB_URL to use an existing
server instead (its user must be allowed to create databases).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from eqflow import notify
from eqflow.db.embedded import EmbeddedPostgres
from eqflow.db.migrate import upgrade
from eqflow.db.sqlfiles import migrations, query
from eqflow.queue import LocalTaskQueue
from tests.service_fixtures import ServiceProcess

# Shared fixtures that live with what they manage: `slurm` (a real single-node SLURM cluster per module).
pytest_plugins = ("tests.slurm_cluster",)

TEMPLATE = "eqflow_test_template"
_counter = itertools.count()


def _with_db(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[EmbeddedPostgres | None]:
    if os.environ.get("EQFLOW_TEST_DB_URL"):
        yield None
        return
    home = Path(tempfile.mkdtemp(prefix="eqflow-test-"))
    cluster = EmbeddedPostgres(home)
    cluster.ensure_running()
    yield cluster
    for listener in list(notify._listeners.values()):  # queues a test left open: stop listening first
        listener.close()
    cluster.reset()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def admin_url(pg_cluster: EmbeddedPostgres | None) -> str:
    base = os.environ.get("EQFLOW_TEST_DB_URL") or pg_cluster.url()  # type: ignore[union-attr]
    url = _with_db(base, "postgres")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    upgrade(_with_db(url, TEMPLATE))
    return url


@pytest.fixture()
def db_url(admin_url: str) -> Iterator[str]:
    name = f"eqflow_test_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")  # generated identifier
    url = _with_db(admin_url, name)
    yield url
    out_of_step = queue_out_of_step(url)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    # Every test that used a database also checks the invariant of migration 0015.
    assert not out_of_step, f"{out_of_step} task(s) queued in tasks and task_queue differently"


@pytest.fixture()
def queue(db_url: str) -> Iterator[LocalTaskQueue]:
    q = LocalTaskQueue(db_url, migrate=False, safety_poll_s=1.0, lease_s=30.0)
    yield q
    q.close()


@contextmanager
def database_at_schema(admin_url: str, name: str, version: int) -> Iterator[str]:
    """A scratch database migrated up to (not including) ``version``, dropped afterwards: for
    the tests of what a migration does with the rows an older schema left."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # generated identifier
        conn.execute(f"CREATE DATABASE {name}")
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(query("schema_version_table"))
            for m in migrations():
                if m.version < version:
                    conn.execute(m.sql)
                    conn.execute(query("record_migration"), {"version": m.version, "name": m.name})
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def queue_out_of_step(url: str) -> int:
    """Tasks queued in tasks without their task_queue row, or the other way round (one snapshot).

    0 where the database cannot be reached (a test that stopped it) or has no task_queue yet.
    """
    try:
        rows = sql(url, "SELECT count(*) FROM (SELECT task_id, task_type FROM tasks WHERE status = 'queued') t "
                        "FULL JOIN task_queue q USING (task_id) "
                        "WHERE t.task_id IS NULL OR q.task_id IS NULL OR t.task_type <> q.task_type")
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return 0
    return int(rows[0][0])  # type: ignore[call-overload]


def sql(url: str, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run one statement directly (for assertions on the raw table)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    """Poll a condition of the outside world (a process, a scheduler) until true or timeout."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.fixture()
def service(db_url: str) -> Iterator[ServiceProcess]:
    """A real EMEWS service process (uvicorn) on the test database."""
    svc = ServiceProcess(db_url).start()
    yield svc
    svc.cleanup()
