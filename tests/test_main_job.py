"""The main job as a user meets it: an installed wheel, the command line's messages and logs,
and where the embedded database lives."""

import io
import json
import logging
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import eqflow
from eqflow.logs import FieldsFormatter, JsonFormatter
from eqflow.workflows.runkit import Progress

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, env=None, cwd=ROOT, timeout=120):
    return subprocess.run([sys.executable, "-m", "eqflow.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env or dict(os.environ), timeout=timeout)


def test_version():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"eqflow {eqflow.__version__}"


def _record(**extra):
    record = logging.LogRecord("eqflow.ackley", logging.INFO, __file__, 1, "retrained", None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_log_lines_carry_their_fields():
    line = FieldsFormatter().format(_record(retrain=3, points=75, pool="demo pool"))
    assert line.endswith('retrained retrain=3 points=75 pool="demo pool"')
    data = json.loads(JsonFormatter().format(_record(retrain=3, types=[0, 1])))
    assert data["message"] == "retrained" and data["retrain"] == 3 and data["types"] == [0, 1]
    assert data["level"] == "INFO" and data["logger"] == "eqflow.ackley"


def test_progress_outside_a_terminal_writes_a_line_per_interval_not_a_bar():
    stream = io.StringIO()  # not a TTY
    progress = Progress(500, "demo", interval=3600, stream=stream)
    for done in range(1, 501):
        progress.update(done, best="1.0")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("[demo] 500/500 done") and "best=1.0" in lines[0]


def test_read_only_commands_never_create_a_database(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "EQFLOW_DB_URL"}
    env["EQFLOW_HOME"] = str(tmp_path / "home")
    for args in (("stats",), ("pool", "list")):
        out = cli(*args, env=env, cwd=tmp_path)
        assert out.returncode != 0, out.stdout
        assert "no database" in out.stderr and "eqflow db start" in out.stderr, out.stderr
    assert not (tmp_path / "home" / "embedded.json").exists() and not (tmp_path / ".eqflow").exists()


def test_starting_the_embedded_database_says_where_and_how_to_stop_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "EQFLOW_DB_URL"}
    env["EQFLOW_HOME"] = str(tmp_path / "home")
    try:
        started = cli("db", "start", env=env, cwd=tmp_path)
        assert started.returncode == 0, started.stderr
        assert str(tmp_path / "home") in started.stderr and "eqflow db stop" in started.stderr
        again = cli("db", "start", env=env, cwd=tmp_path)
        assert "started" not in again.stderr  # already running: nothing to announce
        stats = cli("stats", env=env, cwd=tmp_path)
        assert stats.returncode == 0, stats.stderr
    finally:
        cli("db", "reset", "--yes", env=env, cwd=tmp_path)


def test_pool_run_says_what_it_is(db_url, tmp_path):
    out = subprocess.run([sys.executable, "-m", "eqflow.cli", "pool", "run", "--types", "31", "--fn",
                          "eqflow.workers.tasks:noop", "--name", "talky", "--db", db_url, "--idle-exit", "0.5"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    first = out.stderr.splitlines()[0]
    assert "pool started" in first and "pool=talky-" in first and "types=[31]" in first
    assert "workers=1" in first and "password" not in first and "eqflow pool stop --type 31" in first


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """eqflow built as a wheel and installed into a fresh venv (dependencies from the registry)."""
    where = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(where / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = (where / "dist").glob("eqflow-*.whl")
    env_dir = where / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return env_dir


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_from_another_directory(installed, db_url, tmp_path):
    bin_dir = installed / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(EQFLOW_DB_URL=db_url, PATH=f"{bin_dir}:{env['PATH']}")
    version = subprocess.run([str(bin_dir / "eqflow"), "--version"], capture_output=True, text=True, env=env,
                             cwd=tmp_path)
    assert version.stdout.strip() == f"eqflow {eqflow.__version__}"
    listed = subprocess.run([str(bin_dir / "eqflow"), "examples"], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    assert "local " in listed.stdout and "cluster_example" in listed.stdout
    ran = subprocess.run([str(bin_dir / "eqflow"), "run", "wheel-demo", "--example", "local"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    summary = json.loads(ran.stdout.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["evaluated"] >= 150
    assert (tmp_path / "out" / "wheel-demo" / "queue_and_pools.png").exists()
    # the same engine as a module, and the repository's run.py with that venv's python
    helped = subprocess.run([str(bin_dir / "python"), "-m", "eqflow.workflows.ackley_gpr", "--help"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert helped.returncode == 0 and "--fifo-baseline" in helped.stdout
    repo_run = subprocess.run([str(bin_dir / "python"), str(ROOT / "run.py"), "wheel-demo", str(ROOT / "cfgs" /
                               "local.yaml"), "--no-progress"], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300)
    assert repo_run.returncode == 0, repo_run.stderr[-3000:]
    assert "finished earlier" in repo_run.stderr


def test_service_says_where_it_listens(db_url):
    from tests.service_fixtures import ServiceProcess

    service = ServiceProcess(db_url).start()
    try:
        log = (service.dir / "log").read_text()
        assert f"listening on http://127.0.0.1:{service.port}" in log, log
    finally:
        service.cleanup()
