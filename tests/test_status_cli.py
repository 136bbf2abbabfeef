"""`eqflow status`: a real subprocess against a real database; its output carries the database's
numbers, it never creates a database, and --watch (on a terminal) exits cleanly on Ctrl-C."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psycopg

from eqflow.queue import LocalTaskQueue
from tests.conftest import sql

STATES = ("queued", "running", "complete", "failed", "canceled")


def status(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EQFLOW_DB_URL"}
    return subprocess.run([sys.executable, "-m", "eqflow.cli", "status", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def table_rows(output: str, title: str) -> list[list[str]]:
    """The body rows of the rich table whose title starts with ``title``, as lists of cell texts."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows, body = [], False
    for line in lines[start + 1:]:
        if line.startswith("┡"):
            body = True
        elif line.startswith("└"):
            break
        elif body and line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


def workload(queue: LocalTaskQueue) -> int:
    queue.submit_many("s1", 1, ["a"] * 6)
    queue.submit_many("s1", 2, ["b"] * 2)
    queue.submit_many("s2", 1, ["c"] * 3)
    got = queue.claim(1, n=5, pool="p")
    assert {t.exp_id for t in got} == {"s1"}
    queue.report([(t, "r") for t in got[:3]])
    queue.report_failure([(got[3], "boom-in-s1")], retry=False)
    queue.record_event("s1", "progress", {"done": 3, "target": 10, "best": 0.125, "retrains": 2, "pools": 1})
    queue.record_event("s1", "progress", {"done": 4, "target": 10, "best": 0.0625, "retrains": 2, "pools": 1})
    pool_id = queue.register_pool("statpool", [1, 2], n_workers=3)
    queue.pool_heartbeat(pool_id)
    sql(queue.url, "INSERT INTO scaling_decisions (task_type, action, reason, queued, pools) "
                   "VALUES (1, 'start', 'backlog of 6', 6, 0)")
    return pool_id


def db_counts(url: str, exp_id: str | None) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for t, s, n in sql(url, "SELECT task_type, status::text, count(*) FROM tasks "
                            "WHERE %s::text IS NULL OR exp_id = %s GROUP BY 1, 2", (exp_id, exp_id)):
        out.setdefault(t, {})[s] = n
    return out


def shown_counts(output: str, title: str) -> dict[int, dict[str, int]]:
    return {int(row[0]): {s: int(v) for s, v in zip(STATES, row[1:6], strict=True) if v != "0"}
            for row in table_rows(output, title)}


def test_status_shows_the_database_numbers(queue: LocalTaskQueue, db_url: str) -> None:
    pool_id = workload(queue)
    one = status("--exp", "s1", "--url", db_url)
    assert one.returncode == 0, one.stderr
    assert shown_counts(one.stdout, "Tasks (experiment s1)") == db_counts(db_url, "s1") == \
        {1: {"complete": 3, "failed": 1, "running": 1, "queued": 1}, 2: {"queued": 2}}
    tasks = table_rows(one.stdout, "Tasks (experiment s1)")
    assert [row[6] for row in tasks] == ["3", "0"]  # completed in the last minute, per type
    [exp] = table_rows(one.stdout, "Experiments")
    assert exp == ["s1", "running", "4", "10", "0.0625", "2", "1", exp[7]]  # the newest progress event
    [failure] = table_rows(one.stdout, "Recent failed runs")
    assert failure[2:] == ["s1", "1", "failed", "boom-in-s1"]
    [pool] = table_rows(one.stdout, "Pools (1 alive of 1")
    assert pool[0] == f"statpool-{pool_id}" and pool[2:4] == ["1,2", "3"] and pool[5] == "running"
    [decision] = table_rows(one.stdout, "Recent scaling decisions")
    assert decision[1:5] == ["1", "start", "6", "0"]

    every = status("--url", db_url)
    assert every.returncode == 0, every.stderr
    assert shown_counts(every.stdout, "Tasks (all experiments)") == db_counts(db_url, None)
    assert db_counts(db_url, None)[1]["queued"] == 4  # s2's tasks count here, not above


def test_status_never_creates_a_database(admin_url: str) -> None:
    missing = psycopg.conninfo.make_conninfo(admin_url, dbname=f"eqflow_status_missing_{os.getpid()}")
    out = status("--url", missing)
    assert out.returncode == 1 and "does not exist" in out.stderr
    assert sql(admin_url, "SELECT count(*) FROM pg_database WHERE datname = %s",
               (psycopg.conninfo.conninfo_to_dict(missing)["dbname"],)) == [(0,)]


def test_watch_redraws_on_a_terminal_and_exits_cleanly_on_ctrl_c(queue: LocalTaskQueue, db_url: str) -> None:
    workload(queue)
    main_fd, child_fd = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "LINES": "80", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "eqflow.cli", "status", "--exp", "s1", "--watch",
                             "--interval", "0.5", "--url", db_url],
                            stdin=child_fd, stdout=child_fd, stderr=child_fd, env=env, close_fds=True)
    os.close(child_fd)
    seen = b""

    def read_until(done: Callable[[], bool], seconds: float) -> None:
        nonlocal seen
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not done():
            ready, _, _ = select.select([main_fd], [], [], 0.1)
            if ready:
                try:
                    seen += os.read(main_fd, 65536)
                except OSError:  # the child closed the terminal
                    return

    def last_draw() -> dict[int, dict[str, int]]:
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode("utf-8", "replace")).replace("\r", "")
        title = "Tasks (experiment s1)"
        last = text[text.rindex(title):]
        return shown_counts(last, title) if "└" in last else {}

    try:
        read_until(lambda: seen.count(b"Tasks (experiment s1)") >= 3, 20)  # the first draw, then redraws
        assert seen.count(b"Tasks (experiment s1)") >= 3, seen[-2000:]
        assert last_draw() == db_counts(db_url, "s1")
        queue.submit_many("s1", 2, ["more"] * 5)  # a redraw shows them
        read_until(lambda: last_draw().get(2, {}).get("queued") == 7, 20)
        assert last_draw() == db_counts(db_url, "s1")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        read_until(lambda: False, 0.3)
        assert b"Traceback" not in seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main_fd)
