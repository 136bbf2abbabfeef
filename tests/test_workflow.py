"""The Ackley/GPR workflow end to end on a real database, with real pools."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from eqflow import LocalTaskQueue, StopMode, TaskStatus
from eqflow.config import load_workflow_config
from eqflow.workflows.ackley_gpr import AckleyGPR
from eqflow.workflows.gpr import priorities, scores
from tests.conftest import sql

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path, db_url, **overrides):
    cfg = yaml.safe_load((ROOT / "cfgs" / "local.yaml").read_text())
    cfg["dbs"] = {"main": {"type": "url", "url": db_url}}
    cfg.update({"search_space_size": 40, "num_guesses": 40, "retrain_after": 8, "runtime": 0.005,
                "runtime_var": 0.3, "output_dir": str(tmp_path / "out"),
                "proxystore": {"type": "file", "path": str(tmp_path / "ps")}, **overrides})
    for pool in cfg["pools"].values():
        pool["idle_exit"] = 20
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_py(*args, **kw):
    return subprocess.run([sys.executable, "run.py", *args, "--no-progress"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, **kw)


def stop_all_pools(db_url):
    queue = LocalTaskQueue(db_url, migrate=False)
    queue.stop_pools([0, 1], StopMode.NOW)
    queue.close()


def outputs_of(folder):
    return {name: (folder / name).read_bytes()
            for name in ("tasks.csv", "summary.json", "best_so_far.png", "queue_and_pools.png")}


def test_full_workflow_adds_pools_that_really_claim_and_writes_outputs(tmp_path, db_url):
    cfg = tiny_config(tmp_path, db_url, extra_pools_after_retrain=[1, 2], runtime=0.2, runtime_var=0.1)
    out = run_py("wf", str(cfg), "--fifo-baseline")
    stop_all_pools(db_url)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["evaluated"] == 40 and summary["retrains"] == 4 and summary["pools_started"] == 3
    assert summary["status"] == "finished" and summary["still_open"] == 0
    assert summary["pools_that_ran_tasks"] >= 2
    folder = Path(summary["output"])
    with open(folder / "tasks.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40 and {r["status"] for r in rows} == {"complete"}
    pools = {r["pool"] for r in rows}
    assert len(pools) >= 2, f"a pool added mid-run claimed nothing: {pools}"
    assert any(json.loads(r["priority_history"]) for r in rows)  # queued points were reprioritized
    for png in ("best_so_far.png", "queue_and_pools.png"):
        assert (folder / png).stat().st_size > 10_000
    timelines = sorted(folder.glob("timeline-*.png"))  # a Gantt chart per pool that ran tasks
    assert len(timelines) == summary["pools_that_ran_tasks"]
    progress = sql(db_url, "SELECT data FROM experiment_events WHERE exp_id = 'wf' AND kind = 'progress' "
                           "ORDER BY event_id")
    assert progress and progress[-1][0]["done"] == 40 and progress[-1][0]["target"] == 40
    fifo = json.loads((tmp_path / "out" / "wf-fifo" / "summary.json").read_text())
    assert fifo["retrains"] == 0 and fifo["evaluated"] == 40


def test_db_start_and_stop_commands_run_around_the_workflow(tmp_path, db_url):
    marker = tmp_path / "db.log"
    cfg = tiny_config(tmp_path, db_url, search_space_size=4, num_guesses=4, extra_pools_after_retrain=[],
                      variables={"log": str(marker)})
    text = yaml.safe_load(cfg.read_text())
    text["dbs"]["main"].update(start="echo started >> ${log}", stop="echo stopped >> ${log}")
    cfg.write_text(yaml.safe_dump(text))
    out = run_py("dbcmds", str(cfg))
    stop_all_pools(db_url)
    assert out.returncode == 0, out.stderr
    assert marker.read_text().split() == ["started", "stopped"]


def test_retrain_as_a_task_through_proxystore(tmp_path, db_url):
    # Slow enough that fits on the gpr pool come back before the budget is spent; the ME keeps
    # counting completions while a fit runs, so a retrain still under way at the end is canceled.
    cfg = tiny_config(tmp_path, db_url, reprioritize_endpoint="pool", extra_pools_after_retrain=[],
                      runtime=0.4, runtime_var=0.1)
    out = run_py("wf-remote", str(cfg))
    stop_all_pools(db_url)
    assert out.returncode == 0, out.stderr
    rows = sql(db_url, "SELECT status::text, length(payload), result FROM tasks WHERE task_type = 1")
    complete = [r for r in rows if r[0] == "complete"]
    assert len(complete) >= 2 and {r[0] for r in rows} <= {"complete", "canceled"}
    assert all(r[1] < 4000 for r in rows)  # the training data travel by reference, not inline
    assert all("model" in json.loads(r[2]) for r in complete)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    # every fit that came back reprioritized the queue, but one that lands after the budget is spent
    assert len(complete) - 1 <= summary["retrains"] <= len(complete)
    assert list((tmp_path / "ps").iterdir())  # the file store holds data and models


def test_resume_after_kill_loses_nothing_and_repeats_nothing(tmp_path, db_url):
    cfg = tiny_config(tmp_path, db_url, runtime=0.1, runtime_var=0.1, extra_pools_after_retrain=[])
    proc = subprocess.Popen([sys.executable, "run.py", "resume", str(cfg), "--no-progress"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = sql(db_url, "SELECT count(*) FROM tasks WHERE task_type = 0 AND status = 'complete'")[0][0]
        if done >= 10:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop_all_pools(db_url)  # the killed run's pools are told to stop; what they hold goes back
    out = run_py("resume", str(cfg))
    stop_all_pools(db_url)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["evaluated"] == 40
    rows = sql(db_url, "SELECT status::text, count(*) FROM tasks WHERE task_type = 0 GROUP BY 1")
    assert rows == [("complete", 40)]  # nothing submitted twice, nothing lost


def test_budget_is_enforced_in_the_database_and_every_completion_recorded(tmp_path, db_url):
    """Fast tasks and several pools: results pile up while the ME fits its model. At num_guesses
    the queued points are canceled and the pools stopped at once; whatever completed before the
    stop is in the outputs, and summary.json, tasks.csv and the database agree."""
    cfg = tiny_config(tmp_path, db_url, search_space_size=200, num_guesses=60, retrain_after=10, runtime=0.01,
                      runtime_var=0.3, extra_pools_after_retrain=[1, 2])
    out = run_py("budget", str(cfg))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    statuses = dict(sql(db_url, "SELECT status::text, count(*) FROM tasks WHERE exp_id = 'budget' "
                                "AND task_type = 0 GROUP BY 1"))
    assert summary["evaluated"] == statuses["complete"] and summary["canceled"] == statuses["canceled"]
    assert statuses.get("queued", 0) == 0 and statuses.get("running", 0) == 0
    assert 60 <= summary["evaluated"] < 200 and summary["over_budget"] == summary["evaluated"] - 60
    with open(Path(summary["output"]) / "tasks.csv") as handle:
        rows = list(csv.DictReader(handle))
    complete = [r for r in rows if r["status"] == "complete"]
    assert len(complete) == statuses["complete"] and all(r["value"] != "" for r in complete)
    alive = sql(db_url, "SELECT count(*) FROM pools WHERE name LIKE 'budget-%%' AND status IN ('starting', 'running')")
    assert alive == [(0,)]  # every pool of the run was stopped


def test_the_recorded_config_holds_no_secrets(tmp_path, db_url):
    import psycopg

    from eqflow.workflows.ackley_gpr import public_config

    path = tiny_config(tmp_path, db_url)
    raw = yaml.safe_load(path.read_text())
    raw["task_queues"]["svc"] = {"type": "service", "url": "http://127.0.0.1:1", "token": "tok-s3cr3t"}
    path.write_text(yaml.safe_dump(raw))
    recorded = json.dumps(public_config(load_workflow_config(path)))
    assert "tok-s3cr3t" not in recorded
    password = psycopg.conninfo.conninfo_to_dict(db_url)["password"]
    assert password not in recorded and "***" in recorded


def test_rerunning_a_finished_experiment_changes_nothing(tmp_path, db_url):
    cfg = tiny_config(tmp_path, db_url, search_space_size=30, num_guesses=20, retrain_after=8,
                      extra_pools_after_retrain=[1])
    first = run_py("again", str(cfg), "--fifo-baseline")
    assert first.returncode == 0, first.stderr
    folder = Path(json.loads(first.stdout.strip().splitlines()[-1])["output"])
    before, fifo_before = outputs_of(folder), outputs_of(folder.parent / "again-fifo")
    tasks_before = sql(db_url, "SELECT task_id, status::text, finished_at FROM tasks ORDER BY task_id")
    second = run_py("again", str(cfg))  # without --fifo-baseline: the baseline stays in the plot
    assert second.returncode == 0, second.stderr
    assert "finished earlier" in second.stderr
    assert sql(db_url, "SELECT task_id, status::text, finished_at FROM tasks ORDER BY task_id") == tasks_before
    assert outputs_of(folder) == before and outputs_of(folder.parent / "again-fifo") == fifo_before
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["baseline"]["exp_id"] == "again-fifo" and summary["sessions"] == 1


def test_queue_trace_is_drawn_from_task_timestamps(tmp_path, db_url):
    from eqflow.workflows.ackley_outputs import queue_trace, read_experiment

    # 50 ms tasks: long enough that the first fit lands before the 30 points are done (with 5 ms
    # tasks a pool that reports and claims in one commit can finish them all first).
    cfg = load_workflow_config(tiny_config(tmp_path, db_url, search_space_size=30, num_guesses=30,
                                           extra_pools_after_retrain=[], runtime=0.05))
    queue = LocalTaskQueue(db_url, migrate=False)
    try:
        AckleyGPR(cfg, "trace", queue, progress=False).run()
        trace = queue_trace(read_experiment(queue, cfg, "trace"))
    finally:
        queue.close()
    assert max(trace.queued) == 30 and trace.queued[-1] == 0 and trace.running[-1] == 0
    assert trace.times == sorted(trace.times) and max(trace.running) >= 1
    assert max(trace.pools) == 1 and trace.pools[-1] == 0  # one pool, stopped at the end
    assert len(trace.retrain_times) >= 1


def test_num_guesses_stops_early_and_cancels_the_rest(tmp_path, db_url):
    cfg = load_workflow_config(tiny_config(tmp_path, db_url, search_space_size=80, num_guesses=12, runtime=0.1,
                                           runtime_var=0.1,
                                           extra_pools_after_retrain=[]))
    queue = LocalTaskQueue(db_url, migrate=False)
    try:
        run = AckleyGPR(cfg, "early", queue, progress=False).run()
    finally:
        stop_all_pools(db_url)
        queue.close()
    assert len(run.values) >= 12
    statuses = dict(sql(db_url, "SELECT status::text, count(*) FROM tasks WHERE task_type = 0 GROUP BY 1"))
    assert statuses.get("queued", 0) == 0 and statuses.get("canceled", 0) > 0, (statuses, len(run.values))


def test_acquisitions_rank_points():
    import numpy as np

    from eqflow.workflows.gpr import fit

    rng = np.random.default_rng(0)
    x = rng.uniform(-5, 5, size=(30, 2))
    y = (x ** 2).sum(axis=1)
    model = fit(x, y)
    near, far = np.array([[0.1, 0.1]]), np.array([[4.5, 4.5]])
    for kind in ("mean", "ucb", "ei"):
        s = scores(model, np.vstack([near, far]), kind, float(y.min()))
        assert s[0] > s[1], kind
    assert priorities(np.array([0.5, 2.0, -1.0])) == [1, 2, 0]
    with pytest.raises(ValueError, match="unknown acquisition"):
        scores(model, near, "pi", 0.0)


def test_queue_status_enum_is_used(db_url):
    assert TaskStatus.COMPLETE.final and os.path.exists(ROOT / "cfgs" / "cluster_example.yaml")
    load_workflow_config(ROOT / "cfgs" / "local_full.yaml")
    os.environ.setdefault("EQFLOW_SERVICE_TOKEN", "x")
    load_workflow_config(ROOT / "cfgs" / "cluster_example.yaml")
