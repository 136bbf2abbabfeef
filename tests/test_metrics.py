"""Prometheus metrics: the service's /metrics (a real uvicorn process) and a pool's own port
(a real `eqflow pool run`), scraped after a known workload and compared with the database."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eqflow import as_completed
from eqflow.db.embedded import free_port
from eqflow.db.migrate import upgrade
from eqflow.db.sqlfiles import migrations, query
from eqflow.metrics import read_figures
from eqflow.queue import LocalTaskQueue
from tests.conftest import database_at_schema, sql
from tests.service_fixtures import TOKEN, ServiceProcess

AUTH = {"Authorization": f"Bearer {TOKEN}"}
STATES = ("queued", "running", "complete", "failed", "canceled")
BOUNDS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def db_task_counts(url: str) -> dict[tuple[int, str], int]:
    return {(t, s): n for t, s, n in sql(url, "SELECT task_type, status::text, count(*) FROM tasks GROUP BY 1, 2")}


def metric_task_counts(url: str) -> dict[tuple[int, str], int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(query("metrics_counters")).fetchall()
    return {(t, label): round(v) for metric, t, label, v in rows if metric == "tasks" and round(v) != 0}


def start_pool(db_url: str, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "eqflow.cli", "pool", "run", "--db", db_url, *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_service_and_pool_metrics_equal_the_database(queue: LocalTaskQueue, db_url: str) -> None:
    ok = queue.submit_many("m", 1, [json.dumps({"x": [0.5, 1.0]})] * 12)
    bad = queue.submit_many("m", 1, ["not json"] * 3, max_attempts=2)  # each fails twice, then for good
    queue.submit_many("m", 2, ["never run"] * 4)
    queue.cancel(queue.submit_many("m", 2, ["canceled"] * 2))
    lost = queue.submit("m", 3, "lease lost")
    [held] = queue.claim(3, pool="gone", lease_s=0.5)
    assert held.task_id == lost.task_id
    time.sleep(0.7)
    assert queue.rescue_expired() == {lost.task_id: "queued"}
    sql(db_url, "INSERT INTO scaling_decisions (task_type, action, reason, queued, pools) "
                "VALUES (1, 'start', 'backlog', 15, 0), (1, 'hold', 'enough', 15, 1), (1, 'hold', 'enough', 3, 1)")

    pool_port = free_port()
    pool = start_pool(db_url, "--types", "1", "--fn", "eqflow.workers.tasks:ackley", "--workers", "2",
                      "--name", "metricspool", "--metrics-port", str(pool_port))
    service = ServiceProcess(db_url)
    try:
        assert len(list(as_completed(ok + bad, timeout=60))) == 15
        service.start()
        assert httpx.get(service.url + "/metrics", timeout=10).status_code == 401
        assert httpx.get(service.url + "/metrics", headers={"Authorization": "Bearer nope"},
                         timeout=10).status_code == 401
        reply = httpx.get(service.url + "/metrics", headers=AUTH, timeout=10)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
        got = parse(reply.text)

        assert value(got, "eqflow_db_up") == 1
        assert 0 < value(got, "eqflow_db_scrape_duration_seconds") < 10
        counts = db_task_counts(db_url)
        assert counts[(1, "complete")] == 12 and counts[(1, "failed")] == 3 and counts[(2, "queued")] == 4
        for task_type in (1, 2, 3):
            for state in STATES:
                assert value(got, "eqflow_tasks", task_type=str(task_type), state=state) == \
                    counts.get((task_type, state), 0), (task_type, state)
        [(done, failed, run_failures)] = sql(db_url, """
            SELECT count(*) FILTER (WHERE status = 'complete'), count(*) FILTER (WHERE status = 'failed'),
                   sum(failures) FROM tasks WHERE task_type = 1""")
        assert value(got, "eqflow_tasks_completed_total", task_type="1") == done == 12
        assert value(got, "eqflow_tasks_failed_total", task_type="1") == failed == 3
        assert value(got, "eqflow_task_run_failures_total", task_type="1") == run_failures == 6
        assert value(got, "eqflow_lease_rescues_total", task_type="3") == 1
        assert ("eqflow_lease_rescues_total", frozenset({("task_type", "1")})) not in got  # none lost there
        assert value(got, "eqflow_tasks_completed_last_minute", task_type="1") == 12

        latencies = [float(r[0]) for r in sql(db_url, "SELECT extract(epoch FROM finished_at - created_at) "
                                                      "FROM tasks WHERE status = 'complete' AND task_type = 1")]
        assert value(got, "eqflow_task_latency_seconds_count", task_type="1") == 12
        assert value(got, "eqflow_task_latency_seconds_sum", task_type="1") == pytest.approx(sum(latencies))
        for le in BOUNDS:
            key = ("eqflow_task_latency_seconds_bucket", frozenset({("task_type", "1"), ("le", f"{le:g}")}))
            if key in got:  # buckets are listed up to the largest one used; +Inf always
                assert got[key] == sum(1 for x in latencies if x <= le), le
        assert value(got, "eqflow_task_latency_seconds_bucket", task_type="1", le="+Inf") == 12

        assert value(got, "eqflow_scaling_decisions_total", task_type="1", action="start") == 1
        assert value(got, "eqflow_scaling_decisions_total", task_type="1", action="hold") == 2
        [(alive,)] = sql(db_url, "SELECT count(*) FROM pools WHERE status = 'running'")
        assert value(got, "eqflow_pools_alive") == value(got, "eqflow_pools_live") == alive == 1

        own = parse(httpx.get(f"http://127.0.0.1:{pool_port}/metrics", timeout=10).text)
        [(pool_id, pool_name)] = sql(db_url, "SELECT pool_id, name || '-' || pool_id FROM pools")
        assert value(own, "eqflow_pool_info", pool=pool_name, pool_id=str(pool_id)) == 1
        assert value(own, "eqflow_pool_tasks_completed_total") == 12
        assert value(own, "eqflow_pool_tasks_failed_total") == 6  # every failed run, retried or not
        assert value(own, "eqflow_pool_tasks_running") == 0
        assert value(own, "eqflow_pool_claim_seconds_count") >= 1
        assert 0 <= value(own, "eqflow_pool_heartbeat_age_seconds") < 60
        with pytest.raises(httpx.TransportError):  # bound to 127.0.0.1 only
            httpx.get(f"http://{_other_address()}:{pool_port}/metrics", timeout=2)
    finally:
        service.cleanup()
        pool.send_signal(signal.SIGTERM)
        try:
            pool.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pool.kill()
    assert pool.returncode == 0


def _other_address() -> str:
    """An address of this machine other than loopback (the pool's port must not answer there)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent
            address = s.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("no non-loopback address to check the pool's bind address against")
    return address


def test_metrics_say_the_database_is_down_when_it_is(db_url: str, admin_url: str) -> None:
    service = ServiceProcess(db_url).start()
    try:
        assert value(parse(httpx.get(service.url + "/metrics", headers=AUTH, timeout=10).text), "eqflow_db_up") == 1
        dbname = psycopg.conninfo.conninfo_to_dict(db_url)["dbname"]
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {dbname} WITH (FORCE)")  # generated identifier
        reply = httpx.get(service.url + "/metrics", headers=AUTH, timeout=30)
        assert reply.status_code == 200
        got = parse(reply.text)
        assert value(got, "eqflow_db_up") == 0
        assert not any(name.startswith("eqflow_tasks") for name, _ in got)
    finally:
        service.cleanup()


def test_trigger_counts_stay_exact_through_every_kind_of_change(queue: LocalTaskQueue, db_url: str) -> None:
    """Submit, claim, report, fail, retry, release, reprioritize, cancel, rescue, delete: after each,
    the counters kept by the triggers equal a GROUP BY over tasks."""
    def check() -> None:
        assert metric_task_counts(db_url) == db_task_counts(db_url)

    queue.submit_many("t", 1, [f"p{i}" for i in range(30)], priority=list(range(30)))
    queue.submit_many("t", 2, ["q"] * 5)
    check()
    claimed = queue.claim([1, 2], n=12, pool="a")
    check()
    queue.report([(t, "r") for t in claimed[:4]])
    queue.report_failure([(t, "e") for t in claimed[4:6]], retry=True)
    queue.report_failure([(t, "e") for t in claimed[6:7]], retry=False)
    check()
    queue.release(claimed[7:9])
    queue.release(claimed[9:10], unstarted=True)
    queue.extend_leases(claimed[10:])
    check()
    queue.set_priorities([f.task_id for f in queue.experiment_futures("t")], 7)
    queue.cancel([r[0] for r in sql(db_url, "SELECT task_id FROM tasks WHERE status = 'queued' "
                                            "ORDER BY task_id LIMIT 3")])
    check()
    time.sleep(0.1)
    sql(db_url, "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE status = 'running'")
    rescued = queue.rescue_expired()
    assert rescued
    check()
    sql(db_url, "DELETE FROM tasks WHERE task_type = 2")
    check()
    [(rescues,)] = sql(db_url, "SELECT coalesce(sum(value), 0) FROM task_metrics WHERE metric = 'lease_rescues'")
    assert rescues == len(rescued)
    sql(db_url, "TRUNCATE tasks")
    assert metric_task_counts(db_url) == {} == db_task_counts(db_url)


def test_concurrent_claims_and_reports_keep_the_counters_exact(queue: LocalTaskQueue, db_url: str) -> None:
    """Several connections claiming and reporting at once (shared counter shards, row locks)."""
    import threading

    queue.submit_many("c", 1, ["x"] * 400)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with LocalTaskQueue(db_url, migrate=False, pool_size=1) as own:
                while batch := own.claim(1, n=7, pool="c"):
                    own.report([(t, "ok") for t in batch[::2]])
                    own.report_failure([(t, "no") for t in batch[1::2]], retry=False)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    counts = db_task_counts(db_url)
    assert counts[(1, "complete")] + counts[(1, "failed")] == 400
    assert metric_task_counts(db_url) == counts
    with psycopg.connect(db_url) as conn:
        rows = {(m, t): v for m, t, _, v in conn.execute(query("metrics_counters")).fetchall()
                if m in ("completed", "failed")}
    assert rows == {("completed", 1): counts[(1, "complete")], ("failed", 1): counts[(1, "failed")]}


def test_the_migration_counts_what_was_there_before(admin_url: str) -> None:
    """A database at schema 6 with tasks in every state: upgraded to 7, the counters start right."""
    with database_at_schema(admin_url, f"eqflow_metrics_mig_{os.getpid()}", 7) as url:
        with LocalTaskQueue(url, migrate=False) as q:
            q.submit_many("old", 1, ["a"] * 10)
            q.submit_many("old", 4, ["b"] * 3)
        # today's claims and reports need today's schema (0013): done the way schema 6 did them
        got = [r[0] for r in sql(url, "UPDATE tasks SET status = 'running', pool = 'p', attempts = 1, "
                                      "claim_id = nextval('eqflow_claim_seq'), started_at = now(), "
                                      "lease_expires_at = now() + interval '1 hour' WHERE task_id IN "
                                      "(SELECT task_id FROM tasks WHERE task_type = 1 ORDER BY task_id LIMIT 6) "
                                      "RETURNING task_id")]
        got.sort()
        sql(url, "UPDATE tasks SET status = 'complete', result = 'r', finished_at = now(), "
                 "lease_expires_at = NULL WHERE task_id = ANY(%s)", (got[:3],))
        sql(url, "UPDATE tasks SET status = 'failed', failures = 1, error = 'e', finished_at = now(), "
                 "lease_expires_at = NULL WHERE task_id = %s", (got[3],))
        sql(url, "INSERT INTO scaling_decisions (task_type, action, reason, queued, pools) "
                 "VALUES (1, 'stop', 'idle', 0, 2)")
        assert upgrade(url) == [v.version for v in migrations() if v.version >= 7]
        assert metric_task_counts(url) == db_task_counts(url)
        with psycopg.connect(url) as conn:
            rows = {(m, t, label): v for m, t, label, v in conn.execute(query("metrics_counters")).fetchall()}
        assert rows[("completed", 1, "")] == 3 and rows[("failed", 1, "")] == 1
        assert rows[("scaling_decisions", 1, "stop")] == 1
        assert sum(v for (m, t, _), v in rows.items() if m == "latency_bucket" and t == 1) == 3
        assert not math.isnan(rows[("latency_sum", 1, "")])


def test_report_and_claim_counts_what_the_trigger_would(queue: LocalTaskQueue, db_url: str) -> None:
    """eqflow_report_and_claim keeps its own counts (task_flow, migration 0013): across two task
    types, latencies in several buckets and claims without reports, every figure equals what the
    task table says: states, completions, the latency histogram and sum, the last minute."""
    queue.submit_many("f", 1, ["a"] * 20)
    queue.submit_many("f", 2, ["b"] * 10)
    held = queue.claim([1, 2], n=8, pool="f")
    # backdated submits: these tasks' latencies fall in other buckets than the fresh ones'
    sql(db_url, "UPDATE tasks SET created_at = now() - make_interval(secs => 0.3 * task_id %% 7) "
                "WHERE task_id = ANY(%s)", ([t.task_id for t in held[::2]],))
    for n in (3, 0, 5, 4, 30, 0):
        if not held:
            held = queue.claim(2, n=1, pool="f")  # a claim alone
        _, held = queue.report_and_claim([(t, "r") for t in held], [1, 2], n=n, pool="f")
        assert metric_task_counts(db_url) == db_task_counts(db_url)
    assert db_task_counts(db_url) == {(1, "complete"): 20, (2, "complete"): 10}
    by_le = {(t, le): n for t, le, n in sql(db_url, """
        SELECT task_type, eqflow_latency_le(extract(epoch FROM finished_at - created_at)::float8), count(*)
        FROM tasks WHERE status = 'complete' GROUP BY 1, 2""")}
    sums = {t: (n, s) for t, n, s in sql(db_url, """
        SELECT task_type, count(*), sum(extract(epoch FROM finished_at - created_at)::float8)
        FROM tasks WHERE status = 'complete' GROUP BY 1""")}
    assert len({le for _, le in by_le}) > 1, by_le
    with psycopg.connect(db_url) as conn:
        fig = read_figures(conn)
    assert {(t, le): n for t, b in fig.latency_buckets.items() for le, n in b.items() if n} == \
        {(t, float(le)): n for (t, le), n in by_le.items()}
    assert fig.completed == {t: n for t, (n, _) in sums.items()} == fig.throughput_1m
    assert fig.latency_sum == pytest.approx({t: s for t, (_, s) in sums.items()})
    assert sql(db_url, "SELECT count(*) FROM task_flow")[0][0] > 0  # the hot path counted, not the trigger
    assert sql(db_url, "SELECT count(*) FROM task_metrics WHERE metric = 'completed'")[0][0] == 0
