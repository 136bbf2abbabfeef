"""The command line, the demo ME script, and a non-editable install."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eqflow.db.migrate import latest_version

ROOT = Path(__file__).resolve().parents[1]


def run(args, env_url=None, **kw):
    env = dict(os.environ)
    if env_url:
        env["EQFLOW_DB_URL"] = env_url
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, **kw)


def test_db_init_on_a_url_reports_the_schema_version(db_url):
    out = run([sys.executable, "-m", "eqflow.cli", "db", "init", "--url", db_url])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"applied": [], "schema_version": latest_version()}


def test_embedded_db_lifecycle_in_its_own_home(tmp_path_factory):
    import tempfile

    home = tempfile.mkdtemp(prefix="eqflow-cli-")
    cli = [sys.executable, "-m", "eqflow.cli", "db"]
    try:
        assert json.loads(run(cli + ["status", "--home", home]).stdout)["exists"] is False
        started = json.loads(run(cli + ["start", "--home", home]).stdout)
        assert started["running"] is True
        url = run(cli + ["url", "--home", home]).stdout.strip()
        assert url.startswith("postgresql://eqflow:")
        assert run(cli + ["stop", "--home", home]).stdout.strip() == "stopped"
        assert json.loads(run(cli + ["status", "--home", home]).stdout)["running"] is False
        refused = run(cli + ["reset", "--home", home])
        assert refused.returncode == 2 and "--yes" in refused.stderr
        assert run(cli + ["reset", "--home", home, "--yes"]).returncode == 0
    finally:
        run(cli + ["reset", "--home", home, "--yes"])


@pytest.mark.parametrize("text,expected", [
    ("pools: {}\ntasks: {}\n", "tasks: needs an 'ackley' entry"),
    ("[1, 2", "not valid YAML"),
    ("pools: {p: {fn: 'm:f'}}\ntasks: {ackley: {type: zero, pools: [p]}}\n", "tasks.ackley.type"),
    ("pools: {p: {fn: 'm:f'}}\ntasks: {ackley: {type: 0, pools: [q]}}\n", "tasks.ackley.pools: no pool named 'q'"),
    ("pools: {p: {fn: 'm:f', workers: '${NOPE_NOT_SET}'}}\ntasks: {}\n", "pools.p.workers: ${NOPE_NOT_SET} is not set"),
])
def test_broken_config_names_file_and_key(tmp_path, text, expected):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text(text)
    out = run([sys.executable, "run.py", "x", str(cfg)])
    assert out.returncode == 2
    assert str(cfg) in out.stderr and expected in out.stderr, out.stderr


def test_run_py_help_explains_every_option():
    out = run([sys.executable, "run.py", "--help"])
    for option in ("--fifo-baseline", "--dynamic-scaling", "--no-dynamic-scaling", "--no-progress", "exp_id"):
        assert option in out.stdout


def test_non_editable_install_maps_packages_under_eqflow(tmp_path):
    """`pip install .` puts workers/, service/ and sql/ under eqflow, nothing top-level."""
    target = tmp_path / "site"
    out = run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
               "--target", str(target), "."])
    assert out.returncode == 0, out.stderr
    assert not (target / "workers").exists() and not (target / "service").exists()
    probe = ("from eqflow.db.sqlfiles import migrations, queries; import eqflow.workers.pool, eqflow.service; "
             "print(len(migrations()), 'claim_tasks' in queries())")
    env = dict(os.environ, PYTHONPATH=str(target))
    checked = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.split() == [str(latest_version()), "True"]


def test_pool_cli_start_list_stop(db_url, tmp_path):
    cli = [sys.executable, "-m", "eqflow.cli", "pool"]
    started = run(cli + ["start", "--types", "21", "--fn", "eqflow.workers.tasks:noop", "--name", "clipool",
                         "--db", db_url, "--output-dir", str(tmp_path)])
    assert started.returncode == 0, started.stderr
    job = json.loads(started.stdout)["job_id"]
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listing = json.loads(run(cli + ["list", "--json", "--db", db_url]).stdout)
        if listing["pools"]:
            break
        time.sleep(0.2)
    [pool] = listing["pools"]
    assert pool["pid"] == int(job) and pool["types"] == [21] and pool["launcher"] == "local"
    assert "clipool" in run(cli + ["list", "--db", db_url]).stdout
    stopped = run(cli + ["stop", "--type", "21", "--now", "--db", db_url])
    assert json.loads(stopped.stdout)["stop_requested"] == ["clipool"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and json.loads(run(cli + ["list", "--json", "--db", db_url]).stdout)["pools"]:
        time.sleep(0.2)
    assert json.loads(run(cli + ["list", "--json", "--all", "--db", db_url]).stdout)["pools"][0]["status"] == "stopped"
    bad = run(cli + ["stop", "--db", db_url])
    assert bad.returncode == 2 and "--type" in bad.stderr
