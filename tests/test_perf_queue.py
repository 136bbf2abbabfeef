"""Issue #13's correctness side: report_and_claim (one statement per task), priorities that do
not change are skipped. Speed is measured by `eqflow bench ...`, not here."""

import multiprocessing as mp
import threading

from eqflow import TaskStatus
from eqflow.queue import LocalTaskQueue
from tests.conftest import sql, wait_for


def test_report_and_claim_reports_then_claims_in_priority_order(queue):
    futs = queue.submit_many("exp", 1, [str(i) for i in range(6)], priority=[0, 0, 3, 1, 7, 0])
    first = queue.claim(1, n=2, pool="p")
    assert [t.payload for t in first] == ["4", "2"]
    accepted, nxt = queue.report_and_claim([(t, "r" + t.payload) for t in first], 1, n=3, pool="p")
    assert accepted == {t.task_id for t in first}
    assert [t.payload for t in nxt] == ["3", "0", "1"]
    assert all(t.pool == "p" and t.claim_id is not None and t.attempt == 1 for t in nxt)
    assert (futs[4].result(timeout=5), futs[2].result(timeout=5)) == ("r4", "r2")
    stats = queue.stats("exp")[1]
    assert stats == {"complete": 2, "running": 3, "queued": 1}


def test_report_and_claim_edge_cases(queue):
    queue.submit_many("exp", 1, ["a", "b"])
    queue.submit_many("exp", 2, ["c"], priority=5)
    # nothing to report: a plain claim; n=0: a plain report
    assert queue.report_and_claim([], 1, n=0) == (set(), [])
    [a] = queue.report_and_claim([], 1, n=1, pool="p")[1]
    accepted, none = queue.report_and_claim([(a, "done")], 1, n=0, pool="p")
    assert accepted == {a.task_id} and none == []
    # several types; the queue runs dry: fewer than asked for
    [b] = queue.claim(1, pool="p")
    accepted, got = queue.report_and_claim([(b, "done")], [1, 2], n=10, pool="p")
    assert accepted == {b.task_id} and [t.payload for t in got] == ["c"]
    accepted, got = queue.report_and_claim([(got[0], "done")], [1, 2], n=10, pool="p")
    assert len(accepted) == 1 and got == []
    assert queue.stats("exp") == {1: {"complete": 2}, 2: {"complete": 1}}


def test_report_and_claim_refuses_a_stale_claim(queue, db_url):
    fut = queue.submit("exp", 1, "x")
    [old] = queue.claim(1, pool="p", lease_s=0.1)
    sql(db_url, "UPDATE tasks SET lease_expires_at = now() - interval '1 second'")
    queue.rescue_expired()
    [new] = queue.claim(1, pool="q")  # the same task, claimed again under a new lease
    assert new.task_id == old.task_id and new.claim_id != old.claim_id
    accepted, got = queue.report_and_claim([(old, "stale")], 1, n=1, pool="p")
    assert accepted == set() and got == []
    assert fut.status is TaskStatus.RUNNING and fut.worker_pool == "q"
    assert queue.report_and_claim([(new, "fresh")], 1, n=1, pool="q")[0] == {new.task_id}
    assert fut.result(timeout=5) == "fresh"


def _worker(url: str, n_done: "mp.Queue[list[int]]") -> None:
    q = LocalTaskQueue(url, migrate=False, pool_size=1)
    done: list[int] = []
    tasks = q.claim(1, n=3, pool=f"w{mp.current_process().pid}")
    while tasks:
        accepted, tasks = q.report_and_claim([(t, str(t.task_id)) for t in tasks], 1, n=3,
                                             pool=f"w{mp.current_process().pid}")
        done.extend(accepted)
    q.close()
    n_done.put(done)


def test_report_and_claim_never_loses_or_duplicates_a_task(queue, db_url):
    n = 600
    futs = queue.submit_many("exp", 1, ["{}"] * n)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(db_url, out)) for _ in range(4)]
    for p in procs:
        p.start()
    done = [tid for _ in procs for tid in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
    assert sorted(done) == sorted(f.task_id for f in futs)  # each exactly once
    assert sql(db_url, "SELECT count(*) FROM tasks WHERE status = 'complete' AND result = task_id::text") == [(n,)]
    assert sql(db_url, "SELECT max(attempts) FROM tasks") == [(1,)]
    got = {f.task_id for f in queue.as_completed(futs, timeout=30)}
    assert len(got) == n


def test_report_and_claim_wakes_as_completed(queue):
    futs = queue.submit_many("exp", 1, ["a", "b"])
    tasks = queue.claim(1, n=1, pool="p")

    def work() -> None:
        nonlocal tasks
        while tasks:
            _, tasks = queue.report_and_claim([(t, "ok") for t in tasks], 1, n=1, pool="p")

    thread = threading.Thread(target=work)
    thread.start()
    assert [f.result() for f in queue.as_completed(futs, timeout=10)] == ["ok", "ok"]
    thread.join(timeout=10)


def test_unchanged_priorities_are_skipped(queue, db_url):
    futs = queue.submit_many("exp", 1, ["a", "b", "c"], priority=[1, 2, 3])
    before = sql(db_url, "SELECT task_id, xmin::text FROM tasks ORDER BY task_id")
    assert queue.set_priorities(futs, [1, 5, 3]) == [futs[1].task_id]  # only b changes
    assert queue.set_priorities(futs, 3) == [futs[0].task_id, futs[1].task_id]  # c has 3 already
    after = sql(db_url, "SELECT task_id, xmin::text FROM tasks ORDER BY task_id")
    assert after[2] == before[2]  # c's row was never written
    assert [t.payload for t in queue.claim(1, n=3, pool="p")] == ["a", "b", "c"]  # all 3: FIFO


def _notifications(url: str, action, channels=("eqflow_done", "eqflow_queued")) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for channel in channels:
            conn.execute(f"LISTEN {channel}")
        action()
        got = []
        for note in conn.notifies(timeout=1.0):
            got.append((note.channel, note.payload))
    return got


def test_reports_announce_their_tasks_once_after_commit(queue, db_url):
    futs = queue.submit_many("exp", 1, ["a", "b", "c"])
    tasks = queue.claim(1, n=2, pool="p")
    held = []
    got = _notifications(db_url, lambda: held.extend(
        queue.report_and_claim([(t, "ok") for t in tasks], 1, n=1, pool="p")[1]))
    assert got == [("eqflow_done", f"exp|{futs[0].task_id},{futs[1].task_id}")]
    assert [t.task_id for t in held] == [futs[2].task_id]
    got = _notifications(db_url, lambda: queue.report([(held[0], "ok")]))
    assert got == [("eqflow_done", f"exp|{futs[2].task_id}")]
    assert _notifications(db_url, lambda: queue.report([(held[0], "again")])) == []  # not accepted: no news


def test_reprioritization_announces_nothing(queue, db_url):
    futs = queue.submit_many("exp", 1, ["a", "b"])
    assert _notifications(db_url, lambda: queue.set_priorities(futs, [5, 6])) == []
    assert _notifications(db_url, lambda: queue.set_priorities(futs, 9)) == []
    assert _notifications(db_url, lambda: queue.cancel([futs[0]])) == [("eqflow_done", f"exp|{futs[0].task_id}")]


def test_a_report_that_names_only_the_lease_announces_the_tasks_experiment(queue, db_url):
    """The service and the Globus ops rebuild a lease from task and claim ids alone: the
    notification takes the experiment from the database, not from the caller's object."""
    from eqflow.models import ClaimedTask

    futs = queue.submit_many("exp-x", 1, ["a", "b"])
    a, b = queue.claim(1, n=2, pool="p")
    bare = [ClaimedTask(t.task_id, "", 0, 0, "", None, 0, t.claim_id, "") for t in (a, b)]
    got = _notifications(db_url, lambda: queue.report([(bare[0], "ok")]))
    assert got == [("eqflow_done", f"exp-x|{futs[0].task_id}")]
    got = _notifications(db_url, lambda: queue.report_and_claim([(bare[1], "ok")], 1, n=1, pool="p"))
    assert got == [("eqflow_done", f"exp-x|{futs[1].task_id}")]


def test_report_and_claim_through_the_service(service, queue):
    from eqflow.service_queue import ServiceTaskQueue
    from tests.service_fixtures import TOKEN

    futs = queue.submit_many("svc", 1, ["a", "b", "c"])
    client = ServiceTaskQueue(service.url, TOKEN)
    try:
        first = client.claim(1, n=2, pool="s")
        accepted, nxt = client.report_and_claim([(t, t.payload.upper()) for t in first], 1, n=2, pool="s")
        assert accepted == {t.task_id for t in first} and [t.payload for t in nxt] == ["c"]
        stale = client.report_and_claim([(first[0], "again")], 1, n=1, pool="s")
        assert stale == (set(), [])
        assert client.report_and_claim([(nxt[0], "C")], [1], n=0, pool="s") == ({nxt[0].task_id}, [])
        assert [f.result(timeout=10) for f in futs] == ["A", "B", "C"]
        client._no_report_claim = True  # an older service: a report, then a claim
        queue.submit("svc", 1, "d")
        [d] = client.claim(1, pool="s")
        assert client.report_and_claim([(d, "D")], 1, n=1, pool="s") == ({d.task_id}, [])
    finally:
        client.close()


def test_pool_with_a_deep_batch_runs_each_task_once_and_reports_before_it_stops(queue, db_url):
    """The pool's reporting thread: reports (and the claims riding on them) overlap the workers;
    every task runs once, failures and successes both land, a stop returns nothing finished."""
    import json
    import subprocess
    import sys

    ok = queue.submit_many("deep", 3, [json.dumps({"seconds": 0})] * 300)
    bad = queue.submit_many("deep", 3, ["not json"] * 5, max_attempts=1)
    pool = subprocess.Popen([sys.executable, "-m", "eqflow.workers.pool", "--db", db_url, "--types", "3",
                             "--fn", "eqflow.workers.tasks:sleep", "--workers", "3", "--batch-size", "24",
                             "--idle-exit", "1", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert len(list(queue.as_completed(ok + bad, timeout=120))) == 305
        assert pool.wait(timeout=60) == 0
    finally:
        pool.kill()
    assert sql(db_url, "SELECT status::text, count(*), max(attempts) FROM tasks GROUP BY 1 ORDER BY 1") == [
        ("complete", 300, 1), ("failed", 5, 1)]
    assert sql(db_url, "SELECT status FROM pools") == [("stopped",)]


def test_the_task_table_vacuums_early_and_the_embedded_cluster_looks_often(db_url, pg_cluster):
    """Migration 0011 and the embedded cluster's autovacuum_naptime; a cluster made before it
    gets the setting when eqflow next finds it running (appended and reloaded)."""
    import pathlib
    import time

    import pytest

    [(options,)] = sql(db_url, "SELECT reloptions FROM pg_class WHERE relname = 'tasks'")
    assert "autovacuum_vacuum_scale_factor=0.02" in options
    if pg_cluster is None:
        pytest.skip("an external server (EQFLOW_TEST_DB_URL): its settings are its own")
    assert sql(db_url, "SHOW autovacuum_naptime") == [("10s",)]
    conf = pathlib.Path(pg_cluster._read_state().data_dir) / "postgresql.conf"
    block = "\n# --- eqflow embedded cluster: autovacuum ---\nautovacuum_naptime = 10s\n"
    assert block in conf.read_text()
    conf.write_text(conf.read_text().replace(block, ""))  # as an older eqflow left it
    pg_cluster._pg_ctl(pg_cluster._read_state(), "reload")
    deadline = time.monotonic() + 10
    while sql(db_url, "SHOW autovacuum_naptime") != [("1min",)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sql(db_url, "SHOW autovacuum_naptime") == [("1min",)]
    pg_cluster.ensure_running()
    deadline = time.monotonic() + 10
    while sql(db_url, "SHOW autovacuum_naptime") != [("10s",)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sql(db_url, "SHOW autovacuum_naptime") == [("10s",)]
    assert conf.read_text().count("eqflow embedded cluster: autovacuum") == 1


def test_churn_benchmark_compares_the_settings_and_leaves_the_server_as_it_was(db_url, pg_cluster):
    """`eqflow bench churn` on a few thousand tasks: both settings run, the figures come from
    the server's statistics, and the naptime it changed for the run is reset after."""
    import psycopg
    import pytest

    from eqflow.bench import churn_bench

    if pg_cluster is None:
        pytest.skip("changes a server setting: only on the tests' own embedded cluster")
    figures = churn_bench.run(db_url, completions=3000)
    base, tuned = figures["churn"]
    assert (base["settings"], tuned["settings"]) == ("defaults", "eqflow")
    assert (base["autovacuum_naptime"], tuned["autovacuum_naptime"]) == ("1min", "10s")
    for row in (base, tuned):
        assert row["completions"] == 3000 and row["completions_per_s"] > 0
        assert row["heap_mb"] > 0 and row["index_mb"] > 0
        # the dead row versions were seen, unless an autovacuum took them first: on the tests'
        # busy cluster one can start within a second of a run this short (10 s naptime)
        assert row["dead_rows_max"] > 0 or row["autovacuums"] > 0, row
        assert row["hot_update_pct"] == 0.0  # every update of tasks changes its status
    assert sql(db_url, "SHOW autovacuum_naptime") == [("10s",)]
    bench = psycopg.conninfo.make_conninfo(db_url, dbname="eqflow_bench")
    [(options,)] = sql(bench, "SELECT reloptions FROM pg_class WHERE relname = 'tasks'")
    assert "autovacuum_vacuum_scale_factor=0.02" in options


def test_a_large_report_is_announced_in_chunks_per_experiment(queue, db_url):
    """notify_done after a report: one message per 400 tasks of one experiment, every accepted
    task named once, in id order (the messages wait in the session between the two statements)."""
    a = queue.submit_many("exp-a", 1, ["x"] * 450)
    b = queue.submit_many("exp-b", 1, ["y"] * 3)
    held = queue.claim(1, n=453, pool="p")
    got = _notifications(db_url, lambda: queue.report([(t, "ok") for t in held]), channels=("eqflow_done",))
    by_exp: dict[str, list[list[int]]] = {}
    for _, payload in got:
        exp, _, ids = payload.rpartition("|")
        by_exp.setdefault(exp, []).append([int(i) for i in ids.split(",")])
    assert sorted(len(chunk) for chunk in by_exp["exp-a"]) == [50, 400]
    assert sorted(i for chunk in by_exp["exp-a"] for i in chunk) == [f.task_id for f in a]
    assert by_exp["exp-b"] == [[f.task_id for f in b]]
    # the session's messages were sent and cleared: a report that accepts nothing sends none
    assert _notifications(db_url, lambda: queue.report([(held[0], "again")])) == []


def _next_payloads(inbox, timeout: float = 5.0) -> list[str]:  # type: ignore[no-untyped-def]
    """The next notifications an inbox gets (a resync after the listener connects is skipped)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        payloads, _, woken = inbox.wait(deadline - time.monotonic())
        inbox.clear()
        if payloads:
            return list(payloads)
    return []


def test_the_listener_hears_only_channels_it_has_inboxes_for(db_url):
    """A process waiting for work is not woken for every task finished elsewhere; a channel
    subscribed to later is listened on before subscribe() returns."""
    from eqflow.notify import Listener

    listener = Listener(db_url)
    heard: list[str] = []
    route = listener._route
    listener._route = lambda channel, payload: (heard.append(channel), route(channel, payload))  # type: ignore[method-assign]
    try:
        work = listener.subscribe("eqflow_queued", {"7"})
        sql(db_url, "SELECT pg_notify('eqflow_done', 'exp|1'), pg_notify('eqflow_queued', '7')")
        assert _next_payloads(work) == ["7"]
        assert heard == ["eqflow_queued"]  # the eqflow_done sent first never reached this process
        done = listener.subscribe("eqflow_done", {"exp"})
        sql(db_url, "SELECT pg_notify('eqflow_done', 'exp|2')")
        assert _next_payloads(done) == ["exp|2"]
    finally:
        listener.close()


def test_the_listener_drops_a_channel_nobody_waits_on_and_listens_again_at_once(db_url, monkeypatch):
    """A worker kept busy does not keep listening (PostgreSQL signals every listening backend for
    each notification): once its last inbox is closed for UNLISTEN_AFTER_S the channel is dropped,
    and the next subscribe listens again before it returns, without waiting for the thread's turn."""
    import time

    from eqflow import notify

    listener = notify.Listener(db_url)
    heard: list[str] = []
    route = listener._route
    listener._route = lambda channel, payload: (heard.append(payload), route(channel, payload))  # type: ignore[method-assign]
    try:
        with listener.subscribe("eqflow_queued", {"7"}):
            pass
        assert wait_for(lambda: not listener._ready["eqflow_queued"].is_set(), timeout=30)  # dropped
        time.sleep(2 * notify.TURN_S)  # the UNLISTEN follows the decision
        sql(db_url, "SELECT pg_notify('eqflow_queued', '7')")
        time.sleep(2 * notify.TURN_S)
        assert heard == []  # no longer listened on
        monkeypatch.setattr(notify, "TURN_S", 10.0)
        time.sleep(0.5)  # the thread now sleeps up to 10 s unless woken
        t0 = time.monotonic()
        work = listener.subscribe("eqflow_queued", {"7"})
        assert time.monotonic() - t0 < 2.0  # woken, not waited for
        sql(db_url, "SELECT pg_notify('eqflow_queued', '7')")
        assert _next_payloads(work) == ["7"]
        work.close()
        with listener.subscribe("eqflow_queued", {"7"}) as again:  # within the grace: still listened
            sql(db_url, "SELECT pg_notify('eqflow_queued', '7')")
            assert _next_payloads(again) == ["7"]
    finally:
        listener.close()


def test_a_claim_that_found_work_does_not_listen(queue, db_url):
    """claim() subscribes only when it has to wait; the waiting claim still wakes on new work."""
    import threading
    import time

    queue.submit_many("busy", 41, ["a"] * 2)
    assert queue.claim(41, n=1, timeout=5) and not queue._listener._subscribers
    assert queue.claim(41, n=1, timeout=5) and not queue._listener._subscribers
    later = threading.Timer(0.3, lambda: queue.submit("busy", 41, "b"))
    later.start()
    t0 = time.monotonic()
    got = queue.claim(41, n=1, timeout=10)
    assert [t.payload for t in got] == ["b"] and time.monotonic() - t0 < 5
    assert not queue._listener._subscribers


def test_streaming_completions_are_looked_up_together_and_a_lone_one_at_once(queue, monkeypatch):
    """While completions stream in, as_completed looks them up at most every GATHER_S (one query
    for several); the first completion after a quiet spell is looked up as soon as it is heard."""
    import time

    from eqflow import futures as futures_module

    monkeypatch.setattr(futures_module, "GATHER_S", 1.0)
    monkeypatch.setattr(futures_module, "GATHER_MAX_S", 1.0)
    looked_up: list[list[int]] = []
    finished_among = queue._finished_among
    monkeypatch.setattr(queue, "_finished_among", lambda ids: (looked_up.append(list(ids)), finished_among(ids))[1])
    futs = queue.submit_many("gather", 61, ["a", "b", "c"])
    held = queue.claim(61, n=3, pool="p")
    stream = queue.as_completed(futs, timeout=20)
    t0 = time.monotonic()
    threading.Timer(0.2, lambda: queue.report([(held[0], "1")])).start()
    first = next(stream)
    assert first.result() == "1" and time.monotonic() - t0 < 0.9  # heard and looked up at once
    looked_up.clear()
    queue.report([(held[1], "2")])  # two reports 0.3 s apart: two notifications
    threading.Timer(0.3, lambda: queue.report([(held[2], "3")])).start()
    assert sorted(f.result() for f in stream) == ["2", "3"]
    assert len(looked_up) == 1 and sorted(looked_up[0]) == sorted(t.task_id for t in held[1:])


def test_the_gathering_window_grows_with_what_a_look_up_found_and_skips_a_last_task(queue, monkeypatch):
    """After a look-up that found k tasks, a completion watch gathers for k * GATHER_S (capped
    at GATHER_MAX_S) before it looks up the next; when every pending task is already heard of
    it looks them up at once."""
    import time

    from eqflow import futures as futures_module

    monkeypatch.setattr(futures_module, "GATHER_S", 0.25)
    monkeypatch.setattr(futures_module, "GATHER_MAX_S", 10.0)
    looked_up: list[tuple[float, list[int]]] = []
    finished_among = queue._finished_among
    monkeypatch.setattr(queue, "_finished_among",
                        lambda ids: (looked_up.append((time.monotonic(), sorted(ids))), finished_among(ids))[1])
    futs = queue.submit_many("grow", 62, [str(i) for i in range(7)])
    held = queue.claim(62, n=7, pool="p")
    pending = {f.task_id: f for f in futs}
    watch = queue.watch_completions({"grow"})

    def finished(timeout: float = 10.0) -> list[int]:
        ids = sorted(row[0] for row in watch.finished(pending, timeout))
        for task_id in ids:
            del pending[task_id]
        return ids

    try:
        queue.report([(held[0], "0")])  # settle the watch (its first check may be a full one)
        assert finished() == [held[0].task_id]
        time.sleep(0.3)
        assert finished(0.3) == []  # nothing more: the window is over, the inbox is empty
        queue.report([(t, t.payload) for t in held[1:4]])  # three at once: one look-up finds them
        assert finished() == [t.task_id for t in held[1:4]]
        found_at = looked_up[-1][0]
        looked_up.clear()
        queue.report([(held[4], "4")])
        threading.Timer(0.3, lambda: queue.report([(held[5], "5")])).start()
        assert finished() == [t.task_id for t in held[4:6]]
        [(at, ids)] = looked_up  # one look-up for both, after the 3 * 0.25 s window
        assert ids == [t.task_id for t in held[4:6]] and at - found_at >= 0.7
        # The window is 2 * 0.25 s now, but the last pending task needs no company: at once.
        looked_up.clear()
        t0 = time.monotonic()
        queue.report([(held[6], "6")])
        assert finished() == [held[6].task_id] and time.monotonic() - t0 < 0.45
        assert len(looked_up) == 1
    finally:
        watch.close()


def test_service_benchmark_pairs_local_and_service_in_alternating_rounds(db_url):
    """`eqflow bench service` on a few hundred tasks: one ratio per round, from figures taken
    side by side, and their median; then the one-process pair."""
    import statistics

    from eqflow.bench import service_bench

    figures = service_bench.run(db_url, n_e2e=300, workers=2, batch=20, latency_rounds=5, processes=2, rounds=2)
    e2e = figures["end_to_end_tasks_per_s"]
    assert len(e2e["local"]) == len(e2e["service"]) == 2 and min(e2e["local"] + e2e["service"]) > 0
    ratios = figures["end_to_end_service_over_local"]
    for ratio, loc, svc in zip(ratios, e2e["local"], e2e["service"], strict=True):
        assert abs(ratio - svc / loc) <= 0.011  # from the unrounded rates
    assert abs(figures["end_to_end_service_over_local_median"] - statistics.median(ratios)) <= 0.011
    assert len(figures["latency_p50_service_over_local"]) == 2
    assert all(p > 0 for p in figures["latency_p50_ms"]["service"])
    assert figures["one_process"]["service"] > 0 and figures["service_processes"] == 2


def test_the_ceiling_ladders_data_path_reports_the_held_task_and_claims_the_next(queue, db_url):
    """benchmarks/commit_ceiling.py's least-work statement does what a batch-1 worker's does:
    reports the task it holds (only with its claim id) and claims the highest-priority next one."""
    import psycopg

    from eqflow.db.sqlfiles import query

    futs = queue.submit_many("exp", 5, ["a", "b", "c"], priority=[1, 9, 5])
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(query("ladder_quiet_session"))
        step = query("ladder_report_and_claim")

        def call(task_id, claim_id):
            return conn.execute(step, {"task_id": task_id, "claim_id": claim_id, "result": "r",
                                       "task_type": 5, "pool": "ladder"}).fetchone()

        reported, b_id, b_claim = call(None, None)
        assert (reported, b_id) == (0, futs[1].task_id)
        reported, c_id, c_claim = call(b_id, b_claim + 1)  # not its claim: not reported
        assert (reported, c_id) == (0, futs[2].task_id)
        reported, a_id, _ = call(b_id, b_claim)
        assert (reported, a_id) == (1, futs[0].task_id)
        assert call(c_id, c_claim) == (1, None, None)  # reported; nothing left to claim
    rows = sql(db_url, "SELECT payload, status, result FROM tasks ORDER BY payload")
    assert rows == [("a", "running", None), ("b", "complete", "r"), ("c", "complete", "r")]
