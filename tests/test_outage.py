"""A database outage longer than the lease: a pool (`eqflow pool run`) and the ME ride it out,
each logging a handful of back-off lines, not dozens; a pool given --db-timeout gives up.

The outage here is 20 s (CI); nothing in the code path depends on its length: by default
every call waits for as long as the database is gone (see eqflow/db/connector.py, Outage).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eqflow import LocalTaskQueue, TaskStatus
from tests.chaos_task import count, log_lines, private_cluster, start_pool
from tests.conftest import sql, wait_for

OUTAGE_S = 20.0
LEASE_S = "2"


@pytest.fixture()
def own_cluster() -> Iterator[tuple[object, str]]:
    with private_cluster() as (cluster, url):
        yield cluster, url


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_pool_and_me_ride_out_an_outage_longer_than_the_lease(own_cluster, tmp_path: Path) -> None:
    cluster, url = own_cluster
    me = LocalTaskQueue(url, migrate=False, lease_s=2.0, safety_poll_s=0.5)
    assert me.db.reconnect_timeout is None  # the default: wait out an outage of any length
    payloads = [json.dumps({"i": i, "s": 0.2}) for i in range(150)]
    futures = me.submit_many("outage", 1, payloads, max_attempts=5)
    runs = tmp_path / "runs"
    rider_log, quitter_log = tmp_path / "rider.log", tmp_path / "quitter.log"
    rider = start_pool(url, rider_log, runs, "--types", "1", "--workers", "2", "--lease", LEASE_S)
    quitter = start_pool(url, quitter_log, runs, "--types", "1", "--workers", "1", "--lease", LEASE_S,
                         "--db-timeout", "3")
    stopper = start_pool(url, tmp_path / "stopper.log", runs, "--types", "1", "--workers", "1", "--lease", LEASE_S)
    records = Records()
    logging.getLogger("eqflow").addHandler(records)
    yielded: list[int] = []
    outage_done = threading.Event()
    during: list[int | None] = []

    def outage() -> None:
        cluster.stop()  # type: ignore[attr-defined]
        started = time.monotonic()
        # the pool with --db-timeout 3 exits 1 during the outage; the other waits on
        wait_for(lambda: quitter.poll() is not None, timeout=OUTAGE_S - 8)
        stopper.send_signal(signal.SIGTERM)  # told to stop in the outage: it does not wait for the database
        wait_for(lambda: stopper.poll() is not None, timeout=5)
        during.extend([quitter.poll(), stopper.poll(), rider.poll()])
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
        cluster.ensure_running()  # type: ignore[attr-defined]
        outage_done.set()

    bouncer = None
    try:
        for fut in me.as_completed(futures, timeout=110):
            yielded.append(fut.task_id)
            if len(yielded) == 30:
                bouncer = threading.Thread(target=outage)
                bouncer.start()
        assert bouncer is not None
        bouncer.join(timeout=60)
        assert outage_done.is_set()
        assert during == [1, 1, None], "the --db-timeout pool and the one stopped exit 1, the other rides on"
        assert sorted(yielded) == sorted(f.task_id for f in futures)  # each future once
        assert all(f.status is TaskStatus.COMPLETE and f.result() == p for f, p in zip(futures, payloads, strict=True))
        assert sql(url, "SELECT count(*) FROM tasks WHERE status = 'complete'") == [(150,)]
        # every payload ran, and no task ran more times than its attempts say
        ran: dict[int, int] = {}
        for line in runs.read_text().split():
            ran[int(line)] = ran.get(int(line), 0) + 1
        attempts = {json.loads(p)["i"]: a for p, a in sql(url, "SELECT payload, attempts FROM tasks")}
        assert set(ran) == set(attempts) and all(ran[i] <= attempts[i] for i in ran)
        assert rider.poll() is None, "the pool died in the outage"
        assert wait_for(lambda: sql(url, "SELECT count(*) FROM pools WHERE status = 'running' AND "
                                         "heartbeat_at > now() - interval '3 seconds'") == [(1,)], timeout=10)
    finally:
        logging.getLogger("eqflow").removeHandler(records)
        rider.send_signal(signal.SIGTERM)
        rider.wait(timeout=30)
        for pool in (quitter, stopper):
            if pool.poll() is None:
                pool.kill()
        me.close()
    assert rider.returncode == 0
    lines = log_lines(rider_log)
    # one line per back-off step (1, 2, 4, 8, 16 s: about 5 for 20 s), not one per attempt
    steps = count(lines, "database unreachable")
    assert 2 <= steps <= 8, [line for line in lines if line.get("message") == "database unreachable"]
    assert count(lines, "database reachable again") == 1
    assert [line.get("retry_in_s") for line in lines if line.get("message") == "database unreachable"][:3] == [1, 2, 4]
    assert not any("error connecting" in json.dumps(line) for line in lines)  # psycopg_pool's, silenced
    assert len(lines) < 25, "\n".join(map(json.dumps, lines))
    quit_lines = log_lines(quitter_log)
    assert count(quit_lines, "database unreachable for too long; the pool exits") == 1
    assert count(log_lines(tmp_path / "stopper.log"), "stopping during a database outage") == 1
    # the ME (this process) too: a handful of lines, one outage
    from eqflow.db.connector import _where

    # (threads left by earlier tests in this process may log about their own, dropped databases)
    mine = [r for r in records.records if r.levelno >= logging.WARNING and getattr(r, "db", None) == _where(url)]
    unreachable = [r for r in mine if r.getMessage() == "database unreachable"]
    assert 2 <= len(unreachable) <= 8, [r.__dict__ for r in mine]
    assert sum(r.getMessage() == "database reachable again" for r in mine) == 1


def test_a_write_down_a_connection_the_server_dropped_is_retried_not_ambiguous(db_url: str) -> None:
    """A server restart drops pooled connections; the next non-idempotent write (record_event,
    a submit without idempotency key) on one used a moment ago must not fail as ambiguous."""
    q = LocalTaskQueue(db_url, migrate=False, pool_size=1)
    try:
        for i in range(3):
            q.create_experiment(f"dropped-{i}")  # the pooled connection, used just now
            assert sql(db_url, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND application_name = 'eqflow'") == [(1,)]
            time.sleep(0.1)  # the server's goodbye has arrived
            q.record_event("dropped", "write", {"i": i})
            q.submit("dropped", 1, f"p{i}")
        assert [e.data["i"] for e in q.events("dropped", "write")] == [0, 1, 2]
        assert sql(db_url, "SELECT payload FROM tasks WHERE exp_id = 'dropped' ORDER BY task_id") == [
            ("p0",), ("p1",), ("p2",)]
    finally:
        q.close()
