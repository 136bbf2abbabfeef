"""Chaos: 3,000 tiny tasks on five `eqflow pool run` processes (two workers each) while pool
processes are SIGKILLed or stopped, workers are SIGKILLed busy and idle, PostgreSQL crashes
(pg_ctl stop -m immediate) and restarts, and then stays away for longer than the lease.

Every task completes exactly once, the ME's as_completed yields every future once, no payload
runs more times than its task's attempts say, and the two pools that were never killed at
the pool level are alive at the end. A private PostgreSQL: stopping it disturbs no other test.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from eqflow import Future, LocalTaskQueue
from tests.chaos_task import count, crash, kill_workers, log_lines, private_cluster, start_pool, workers_of
from tests.conftest import sql, wait_for

N = 2000
TASK_S = 0.03
LEASE_S = 3.0
OUTAGE_S = 90.0  # > the lease (held tasks are rescued meanwhile) and > the 60 s after which all used to give up


@pytest.fixture()
def own_cluster() -> Iterator[tuple[object, str]]:
    with private_cluster() as (cluster, url):
        yield cluster, url


def test_chaos_every_task_completes_exactly_once(own_cluster, tmp_path: Path) -> None:
    cluster, url = own_cluster
    started = time.monotonic()
    me = LocalTaskQueue(url, migrate=False, lease_s=LEASE_S, safety_poll_s=0.5)
    payloads = [json.dumps({"i": i, "s": TASK_S}) for i in range(N)]
    futures = me.submit_many("chaos", 1, payloads, max_attempts=10)
    runs = tmp_path / "runs"
    args = ("--types", "1", "--workers", "2", "--batch-size", "4", "--lease", str(LEASE_S))
    names = ["keeper1", "keeper2", "killed_early", "killed_in_outage", "stopped"]
    pools = {name: start_pool(url, tmp_path / f"{name}.log", runs, "--name", name, *args) for name in names}
    keepers = [pools["keeper1"], pools["keeper2"]]  # never killed at the pool level; their workers are
    orphans: list[psutil.Process] = []
    done = [0]
    events: list[str] = []
    errors: list[BaseException] = []

    def progress(n: int) -> None:
        if not wait_for(lambda: done[0] >= n, timeout=100):
            raise AssertionError(f"no progress to {n} tasks (at {done[0]})")

    def chaos() -> None:
        try:
            progress(200)
            for pool in keepers:  # busy workers, most likely
                assert kill_workers(pool) == 1
            victim = pools["killed_early"]
            orphans.extend(workers_of(victim))  # type: ignore[arg-type]
            victim.kill()
            events.append("pool SIGKILLed, workers SIGKILLed")
            progress(450)
            pools["stopped"].send_signal(signal.SIGTERM)  # returns its tasks at once
            assert pools["stopped"].wait(timeout=30) == 0
            events.append("pool stopped")
            progress(650)
            crash(cluster)
            time.sleep(1.0)
            cluster.ensure_running()  # type: ignore[attr-defined]
            events.append("crash restart")
            progress(1050)
            cluster.stop()  # type: ignore[attr-defined]
            down = time.monotonic()
            time.sleep(2.0)
            for pool in keepers:  # idle now: their pools wait for the database
                assert kill_workers(pool) == 1
            orphans.extend(workers_of(pools["killed_in_outage"]))  # type: ignore[arg-type]
            pools["killed_in_outage"].kill()
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
            cluster.ensure_running()  # type: ignore[attr-defined]
            events.append("outage")
            progress(1450)
            assert kill_workers(keepers[0], 2) == 2
            assert kill_workers(keepers[1]) == 1
            events.append("kills after the outage")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    yielded: list[int] = []
    monkey = threading.Thread(target=chaos, daemon=True)
    try:
        monkey.start()
        for fut in me.as_completed(futures, timeout=150):
            yielded.append(fut.task_id)
            done[0] = len(yielded)
        monkey.join(timeout=60)
        assert not errors, errors
        assert events == ["pool SIGKILLed, workers SIGKILLed", "pool stopped", "crash restart", "outage",
                          "kills after the outage"]

        _check_tasks(url, futures, yielded, runs)

        # the keepers are alive, heartbeating, with their workers replaced; the killed pools are
        # dead and so are their workers
        assert all(pool.poll() is None for pool in keepers)
        assert wait_for(lambda: all(len(workers_of(pool)) == 2 for pool in keepers), timeout=10)
        heartbeating = ("SELECT count(*) FROM pools WHERE name IN ('keeper1', 'keeper2') AND status = 'running' "
                        "AND heartbeat_at > now() - interval '3 seconds'")
        assert wait_for(lambda: sql(url, heartbeating) == [(2,)], timeout=10)
        assert pools["killed_early"].poll() == -signal.SIGKILL and pools["killed_in_outage"].poll() == -signal.SIGKILL
        assert wait_for(lambda: not any(_alive(p) for p in orphans), timeout=15), "workers outlived their pool"
    finally:
        _stop_all(list(pools.values()), orphans)
        me.close()
    assert all(pool.returncode == 0 for pool in keepers)
    for name in ("keeper1", "keeper2"):
        _check_log(tmp_path / f"{name}.log")
    assert time.monotonic() - started < 120


def _check_tasks(url: str, futures: list[Future], yielded: list[int], runs: Path) -> None:
    # the ME saw every future exactly once
    assert len(yielded) == N and sorted(yielded) == sorted(f.task_id for f in futures)
    # every task completed, once, with its own result
    rows = sql(url, "SELECT task_id, status::text, payload, result, attempts, failures FROM tasks")
    assert len(rows) == N and {r[1] for r in rows} == {"complete"}
    assert all(r[3] == r[2] for r in rows)
    assert {f.task_id: f.result() for f in futures} == {r[0]: r[2] for r in rows}
    # runs counted truthfully: every payload ran, none more often than its attempts say
    ran = Counter(int(line) for line in runs.read_text().split())
    attempts = {json.loads(r[2])["i"]: r[4] for r in rows}
    assert set(ran) == set(range(N))
    overrun = {i: (ran[i], attempts[i]) for i in ran if ran[i] > attempts[i]}
    assert not overrun, f"ran more often than attempts show: {dict(list(overrun.items())[:10])}"
    # the chaos did cost runs: lost and failed ones were run again
    assert sum(ran.values()) > N and sum(r[5] for r in rows) > 0


def _stop_all(pools: list[subprocess.Popen[bytes]], orphans: list[psutil.Process]) -> None:
    for pool in pools:
        if pool.poll() is None:
            pool.send_signal(signal.SIGTERM)
    for pool in pools:
        try:
            pool.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pool.kill()
    for proc in orphans:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _check_log(path: Path) -> None:
    lines = log_lines(path)
    # one line per back-off step: the crash (a step or two) and the 90 s outage (about 7)
    assert 2 <= count(lines, "database unreachable") <= 12, path.name
    assert 1 <= count(lines, "database reachable again") <= 2, path.name
    assert not any("error connecting" in json.dumps(line) for line in lines)  # psycopg_pool's, silenced
    assert not [line for line in lines if "raw" in line or line.get("level") in ("ERROR", "CRITICAL")]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
