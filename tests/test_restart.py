"""PostgreSQL stopped and started mid-run: clients reconnect and the run finishes."""

import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from eqflow import LocalTaskQueue
from eqflow.db.embedded import EmbeddedPostgres
from eqflow.db.resolve import resolve_url


@pytest.fixture()
def own_cluster():
    home = Path(tempfile.mkdtemp(prefix="eqflow-restart-"))
    cluster = EmbeddedPostgres(home)
    url = resolve_url(cluster.ensure_running())
    yield cluster, url
    cluster.reset()
    shutil.rmtree(home, ignore_errors=True)


def test_run_survives_a_database_restart(own_cluster):
    cluster, url = own_cluster
    me = LocalTaskQueue(url, migrate=False, safety_poll_s=0.5, reconnect_timeout=60)
    worker_q = LocalTaskQueue(url, migrate=False, safety_poll_s=0.5, reconnect_timeout=60)
    futures = me.submit_many("restart", 1, [str(i) for i in range(300)])
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker():
        try:
            while not stop.is_set():
                tasks = worker_q.claim(1, n=5, pool="w", timeout=0.5)
                time.sleep(0.005 * len(tasks))
                worker_q.report([(t, t.payload) for t in tasks])
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    restarted = threading.Event()

    def bounce():
        cluster.stop()
        time.sleep(1.0)
        cluster.ensure_running()
        restarted.set()

    results = []
    bouncer = None
    for fut in me.as_completed(futures, timeout=120):
        results.append(fut.result())
        if len(results) == 50:
            bouncer = threading.Thread(target=bounce)
            bouncer.start()
    stop.set()
    thread.join(timeout=30)
    assert bouncer is not None
    bouncer.join(timeout=60)
    assert restarted.is_set() and not errors
    assert sorted(results, key=int) == [str(i) for i in range(300)]
    me.close()
    worker_q.close()
