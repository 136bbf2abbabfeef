"""Helpers for tests/test_chaos.py and tests/test_outage.py: a task that records each run it
starts, real `eqflow pool run` subprocesses, their worker processes, a private PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS_ENV = "EQFLOW_CHAOS_RUNS"


def logged_sleep(payload: str) -> str:
    """Payload {"i": n, "s": seconds}: appends n to the runs file (one line per run started;
    appends this small are atomic), sleeps, echoes the payload."""
    spec = json.loads(payload)
    with open(os.environ[RUNS_ENV], "a") as runs:
        runs.write(f"{spec['i']}\n")
    time.sleep(float(spec["s"]))
    return payload


def start_pool(url: str, log_path: Path, runs_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """`eqflow pool run` running logged_sleep; JSON log lines go to log_path."""
    env = {**os.environ, RUNS_ENV: str(runs_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    env.pop("EQFLOW_DB_URL", None)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "eqflow.cli", "pool", "run", "--db", url, "--fn", "chaos_task:logged_sleep",
             "--log-json", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def workers_of(pool: subprocess.Popen[bytes]) -> list[object]:
    import psutil

    try:
        return [c for c in psutil.Process(pool.pid).children() if "spawn_main" in " ".join(c.cmdline())]
    except psutil.Error:
        return []


def kill_workers(pool: subprocess.Popen[bytes], n: int = 1) -> int:
    """SIGKILL up to n of the pool's worker processes (whatever they are doing)."""
    import psutil

    killed = 0
    for worker in workers_of(pool)[:n]:
        with contextlib.suppress(psutil.Error):
            worker.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
            killed += 1
    return killed


def log_lines(path: Path) -> list[dict[str, object]]:
    """The JSON log lines of a pool (anything else, e.g. a traceback, as {"raw": line})."""
    out: list[dict[str, object]] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"raw": line})
    return out


def count(lines: list[dict[str, object]], message: str) -> int:
    return sum(1 for line in lines if line.get("message") == message)


@contextlib.contextmanager
def private_cluster() -> Iterator[tuple[object, str]]:
    """A PostgreSQL of the test's own (stopping it disturbs no other test), migrated; reset after."""
    from eqflow.db.embedded import EmbeddedPostgres
    from eqflow.db.resolve import resolve_url

    home = Path(tempfile.mkdtemp(prefix="eqflow-chaos-"))
    cluster = EmbeddedPostgres(home)
    try:
        url = resolve_url(cluster.ensure_running())
        yield cluster, url
    finally:
        cluster.reset()
        shutil.rmtree(home, ignore_errors=True)


def crash(cluster: object) -> None:
    """pg_ctl stop -m immediate: the server dies as if killed (crash recovery on the next start)."""
    state = cluster._read_state()  # type: ignore[attr-defined]
    cluster._pg_ctl(state, "stop", "-m", "immediate", "-w", "-t", "60")  # type: ignore[attr-defined]
