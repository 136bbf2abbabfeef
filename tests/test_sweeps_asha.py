"""ASHA experiments (slurm_sweeps' API) on real pools and a real PostgreSQL."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from eqflow.sweeps import (
    ASHA,
    Choice,
    Experiment,
    Grid,
    LogUniform,
    Result,
    Status,
    TrialPruned,
    Uniform,
    log,
)
from eqflow.sweeps import trial as trial_mod
from eqflow.sweeps.space import sample_cfgs, trial_id
from tests.conftest import sql, wait_for

ROOT = Path(__file__).resolve().parent.parent


# -- train functions (imported by the pool workers) --------------------------------------------
def readme_train(cfg: dict[str, Any]) -> None:
    """slurm_sweeps' README example: the loss of parameter p after each epoch."""
    for epoch in range(cfg.get("epochs", 10)):
        time.sleep(cfg.get("sleep", 0.0))
        log({"loss": (cfg["parameter"] - 1) ** 2 / (epoch + 1)}, epoch)


def crashing_train(cfg: dict[str, Any]) -> None:
    log({"loss": 1.0}, 0)
    if cfg["parameter"] > 1.5:
        raise ZeroDivisionError(f"crash at parameter {cfg['parameter']}")
    log({"loss": 0.5}, 1)


def dying_train(cfg: dict[str, Any]) -> None:
    log({"loss": 1.0}, 0)
    if cfg["parameter"] > 1.5:
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies: nothing recorded by the trial
    log({"loss": 0.5}, 1)


def slow_train(cfg: dict[str, Any]) -> None:
    for epoch in range(8):
        time.sleep(0.25)
        log({"loss": (cfg["parameter"] - 1) ** 2 / (epoch + 1)}, epoch)


# -- units ------------------------------------------------------------------------------------
def test_rungs():
    assert ASHA("loss", "min").rungs == (1, 4, 16)
    assert ASHA("loss", "min", reduction_factor=2, min_t=2, max_t=16).rungs == (2, 4, 8, 16)
    assert ASHA("loss", "max", reduction_factor=3, min_t=1, max_t=27).rungs == (1, 3, 9, 27)
    for bad in ({"mode": "best"}, {"reduction_factor": 1}, {"min_t": 5, "max_t": 5}, {"rule": "median"}):
        with pytest.raises(ValueError):
            ASHA("loss", **{"mode": "min", **bad})


def test_search_spaces_and_trial_ids():
    cfgs = sample_cfgs({"lr": LogUniform(1e-4, 1e-1), "opt": Choice(["sgd", "adam"]), "p": Uniform(0, 2),
                        "fixed": 3}, n_trials=20, seed=1)
    assert len(cfgs) == 20 and all(1e-4 <= c["lr"] <= 1e-1 and 0 <= c["p"] <= 2 for c in cfgs)
    assert {c["opt"] for c in cfgs} == {"sgd", "adam"} and {c["fixed"] for c in cfgs} == {3}
    grid = sample_cfgs({"a": Grid([1, 2, 3]), "nested": {"b": Grid(["x", "y"])}}, n_trials=99)
    assert len(grid) == 6 and {(c["a"], c["nested"]["b"]) for c in grid} == {(a, b) for a in (1, 2, 3) for b in "xy"}
    tid = trial_id({"b": 1, "a": 2})
    assert len(tid) == 6 and int(tid, 16) >= 0 and tid == trial_id({"a": 2, "b": 1})


def test_log_rejects_non_numeric_metrics_and_is_a_no_op_outside_trials():
    with pytest.raises(TypeError, match="'loss' must be a number"):
        log({"loss": "low"}, 1)
    with pytest.raises(TypeError):
        log({"loss": None}, 1)
    log({"loss": 0.5}, 1)  # outside a trial: nothing to record, no error


# -- experiments ------------------------------------------------------------------------------
def test_readme_example_prunes_and_returns_a_dataframe(db_url, tmp_path):
    out = io.StringIO()
    exp = Experiment(readme_train, {"parameter": Grid([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]),
                                    "epochs": 16},
                     name="Readme", local_dir=tmp_path, asha=ASHA("loss", "min", reduction_factor=2, min_t=1, max_t=16),
                     db_url=db_url, stream=out)
    df = exp.run(max_concurrent_trials=2, summary_interval_in_sec=0.5)
    exp.close()
    assert isinstance(df, pd.DataFrame) and {"trial_id", "iteration", "loss", "status", "cfg.parameter"} <= set(df)
    result = Result("Readme", tmp_path, db_url=db_url)
    trials = result.trials
    assert len(trials) == 9 and all(t.is_terminated() and len(t.trial_id) == 6 for t in trials)
    statuses = {t.cfg["parameter"]: t.status for t in trials}
    assert statuses[1.0] is Status.COMPLETED and Status.PRUNED in statuses.values()
    best = result.best_trial()
    assert best.cfg["parameter"] == 1.0 and best.runtime is not None and best.runtime > 0
    assert result.best_trial("loss", "max").cfg["parameter"] in (0.0, 2.0)
    pruned = [t for t in trials if t.status is Status.PRUNED]
    assert all(len(t.metrics["loss"]) < 16 for t in pruned)
    text = out.getvalue()
    assert "=== Status ===" in text and "pruned" in text
    assert (tmp_path / "Readme" / "learning_curves.png").stat().st_size > 1000
    # every metric row is in PostgreSQL, long format
    [(rows,)] = sql(db_url, "SELECT count(*) FROM sweep_metrics")
    assert rows == sum(len(t.metrics["loss"]) for t in trials) == len(df.dropna(subset=["loss"]))
    with pytest.raises(FileExistsError):
        Experiment(readme_train, {"parameter": 1.0}, name="Readme", local_dir=tmp_path, db_url=db_url)


def test_a_crashed_trial_is_failed_not_pruned(db_url, tmp_path):
    exp = Experiment(crashing_train, {"parameter": Grid([1.0, 2.0])}, name="Crash", local_dir=tmp_path,
                     asha=ASHA("loss", "min"), db_url=db_url, stream=io.StringIO())
    exp.run(max_concurrent_trials=2, summary_interval_in_sec=1.0)
    exp.close()
    by_param = {t.cfg["parameter"]: t for t in Result("Crash", tmp_path, db_url=db_url).trials}
    assert by_param[1.0].status is Status.COMPLETED
    assert by_param[2.0].status is Status.FAILED and "ZeroDivisionError: crash at parameter 2.0" in by_param[2.0].error
    # the trial ran once: a crash is not retried
    [(attempts,)] = sql(db_url, "SELECT max(attempts) FROM tasks")
    assert attempts == 1


def test_a_trial_whose_worker_dies_is_retried_then_failed(db_url, tmp_path):
    exp = Experiment(dying_train, {"parameter": Grid([1.0, 2.0])}, name="Dies", local_dir=tmp_path,
                     db_url=db_url, stream=io.StringIO(), max_attempts=2)
    exp.run(max_concurrent_trials=2, summary_interval_in_sec=1.0)
    exp.close()
    by_param = {t.cfg["parameter"]: t for t in Result("Dies", tmp_path, db_url=db_url).trials}
    assert by_param[1.0].status is Status.COMPLETED
    dead = by_param[2.0]
    assert dead.status is Status.FAILED and "worker process" in dead.error  # killed by SIGKILL, or lost
    [(attempts,)] = sql(db_url, "SELECT attempts FROM tasks t JOIN sweep_trials s ON s.task_id = t.task_id "
                                "WHERE s.trial_id = %s", (dead.trial_id,))
    assert attempts == 2  # run again once, then failed for good


def _decide_rows(db_url: str) -> list[tuple[Any, ...]]:
    return sql(db_url, "SELECT trial_id, rung, value, decision FROM sweep_rungs ORDER BY seq")


def test_sixteen_trials_logging_at_once_lose_no_row_and_decide_each_rung_once(db_url, queue):
    """16 threads, each a trial, log at the same instants; every metric row arrives and every
    rung decision is made exactly once, consistent with the order PostgreSQL made them in."""
    asha = ASHA("loss", "min", reduction_factor=2, min_t=1, max_t=16)
    exp_id = "asha-race"
    queue.db.execute("sweep_experiment_create", {"exp_id": exp_id, "name": "race", "local_dir": "/tmp",
                                                 "generation": "g", "asha": None, "train": "", "runtime": "{}"})
    ids = [f"t{i:02d}" for i in range(16)]
    queue.db.execute("sweep_trials_insert", {"exp_id": exp_id, "trial_ids": ids, "seqs": list(range(16)),
                                             "cfgs": ["{}"] * 16})
    barrier = threading.Barrier(16)
    outcome: dict[str, int] = {}

    def run(i: int) -> None:
        tr = trial_mod._Trial(queue.db, exp_id, ids[i], asha)
        trial_mod._current.set(tr)  # what run_trial does in a worker: this thread runs trial i
        last = 0
        try:
            for it in range(1, 17):
                barrier.wait(timeout=30)
                if outcome.get(ids[i]):
                    continue  # a pruned trial stops logging but keeps the barrier company
                last = it
                try:
                    log({"loss": ((i * 7) % 16) / (it + 1) + 0.001 * i, "aux": float(i)}, it)
                except TrialPruned:
                    outcome[ids[i]] = it
        finally:
            outcome.setdefault(ids[i], last)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    rows = _decide_rows(queue.url)
    keys = [(r[0], r[1]) for r in rows]
    assert len(keys) == len(set(keys)), "a rung decision was made twice"
    # replay in the order made: each decision follows the rule over the values recorded before it
    recorded: dict[int, list[float]] = {}
    for tid, rung, value, decision in rows:
        before = recorded.setdefault(rung, [])
        n = len(before) + 1
        better = sum(1 for v in before if v < value)
        assert decision == ("continue" if better < max(1, n // 2) else "prune"), (tid, rung)
        before.append(value)
    # each trial: a decision at every judged rung up to where it stopped, and none after
    for tid in ids:
        mine = sorted(r[1] for r in rows if r[0] == tid)
        stopped = outcome[tid]
        assert mine == [r for r in asha.judged_rungs if r <= stopped], (tid, mine, stopped)
    # no metric row lost: every trial logged both metrics at every iteration until pruned
    expected = sum(2 * outcome[tid] for tid in ids)
    [(n_rows,)] = sql(queue.url, "SELECT count(*) FROM sweep_metrics")
    assert n_rows == expected
    assert any(r[3] == "prune" for r in rows) and any(r[3] == "continue" for r in rows)


def test_slurm_sweeps_percentile_rule_rechecks_on_every_log(db_url, tmp_path):
    exp = Experiment(readme_train, {"parameter": Grid([0.0, 1.0, 2.5]), "epochs": 8, "sleep": 0.02},
                     name="Pct", local_dir=tmp_path, db_url=db_url, stream=io.StringIO(),
                     asha=ASHA("loss", "min", reduction_factor=2, min_t=1, max_t=8, rule="percentile"))
    exp.run(max_concurrent_trials=3, summary_interval_in_sec=1.0)
    exp.close()
    trials = {t.cfg["parameter"]: t for t in Result("Pct", tmp_path, db_url=db_url).trials}
    assert trials[1.0].status is Status.COMPLETED
    assert trials[2.5].status is Status.PRUNED
    rows = sql(db_url, "SELECT DISTINCT rung FROM sweep_rungs")
    assert {r[0] for r in rows} <= {1, 2, 4, 8}


DRIVER = """
import sys
sys.path[:0] = [{root!r}, {root!r} + "/tests"]
from test_sweeps_asha import slow_train
from eqflow.sweeps import ASHA, Experiment, Grid
exp = Experiment(slow_train, {{"parameter": Grid([0.5, 0.8, 1.0, 1.2, 1.5, 2.0])}}, name="Killed",
                 local_dir={local!r}, asha=ASHA("loss", "min", reduction_factor=2, min_t=1, max_t=8),
                 db_url={db!r}, restore={restore})
exp.run(max_concurrent_trials=2, summary_interval_in_sec=1.0)
"""


def test_kill_the_driver_mid_run_and_restore_continues(db_url, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(root=str(ROOT), local=str(tmp_path), db=db_url, restore=False))
    driver = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, start_new_session=True,
                              stdout=subprocess.DEVNULL)

    def ended() -> int:
        return int(sql(db_url, "SELECT count(*) FROM sweep_trials WHERE ended_at IS NOT NULL")[0][0])

    try:
        assert wait_for(lambda: ended() >= 2, timeout=60)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
    for (pid,) in sql(db_url, "SELECT pid FROM pools WHERE status = 'running'"):
        os.killpg(int(pid), signal.SIGKILL)  # its pool too: trials in flight lose their worker
    at_kill = {r[0]: r[1] for r in sql(db_url, "SELECT trial_id, status FROM sweep_trials")}
    assert 2 <= sum(s in ("completed", "pruned") for s in at_kill.values()) < 6
    sql(db_url, "UPDATE tasks SET lease_expires_at = now() WHERE status = 'running'")  # as if the lease ran out
    exp = Experiment(slow_train, {"parameter": Grid([0.5, 0.8, 1.0, 1.2, 1.5, 2.0])}, name="Killed",
                     local_dir=tmp_path, db_url=db_url, restore=True, stream=io.StringIO())
    exp.run(max_concurrent_trials=2, summary_interval_in_sec=1.0)
    exp.close()
    trials = Result("Killed", tmp_path, db_url=db_url).trials
    assert len(trials) == 6 and all(t.is_terminated() for t in trials)
    for t in trials:
        if at_kill[t.trial_id] in ("completed", "pruned"):
            assert t.status.value == at_kill[t.trial_id]  # ended trials were not run again
    [(tasks,)] = sql(db_url, "SELECT count(*) FROM tasks")
    assert tasks == 6, "restore submitted trials again"
    assert {t.cfg["parameter"]: t.status for t in trials}[1.0] is Status.COMPLETED
