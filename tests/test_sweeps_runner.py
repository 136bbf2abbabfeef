"""Grid and binary searches (Runner's API) on real pools and a real PostgreSQL; GPUs are
simulated with CUDA_VISIBLE_DEVICES (each job reports the device it was given)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from eqflow.sweeps import (
    BinarySearchConfig,
    GPUJobResult,
    GridSearchConfig,
    InvalidConfigurationError,
    main,
    pydraclass,
    run_binary_searches,
    run_grid_searches,
)
from eqflow.sweeps.gpus import visible_gpus
from eqflow.sweeps.runner import search_exp_id
from tests.conftest import sql, wait_for

ROOT = Path(__file__).resolve().parent.parent
THRESHOLD = 37.3


@pydraclass
class ProbeConfig:
    value: float = 0.0
    seed: int = 0
    sleep_s: float = 0.0
    record: str = ""
    base_dir: str = ""


def _record(config: ProbeConfig) -> None:
    if config.record:
        with open(config.record, "a") as handle:
            handle.write(json.dumps({"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": time.time(),
                                     "seed": config.seed, "value": config.value, "pid": os.getpid()}) + "\n")


@pydraclass
class ThresholdSearch(BinarySearchConfig):
    """Success iff value >= THRESHOLD; seed 3 always raises."""

    record: str = ""
    sleep_s: float = 0.0

    def get_experiment_config_and_base_dir(self, **props: Any) -> tuple[ProbeConfig, str]:
        base = f"{self.base_dir}/v{props['value']:.4f}_s{props['seed']}"
        return ProbeConfig(value=props["value"], seed=props["seed"], sleep_s=self.sleep_s, record=self.record,
                           base_dir=base), base

    def run_experiment_config(self, config: ProbeConfig) -> float:
        _record(config)
        print(f"probing {config.value} seed {config.seed}")
        time.sleep(config.sleep_s)
        if config.seed == 3:
            raise RuntimeError(f"seed 3 always fails (value {config.value})")
        return config.value

    def agg_results(self, results: list[GPUJobResult]) -> tuple[bool, Any]:
        ok = [r.result for r in results if r.success]
        return bool(ok) and min(ok) >= THRESHOLD, sum(ok) / max(1, len(ok))


@pydraclass
class SleepGrid(GridSearchConfig):
    record: str = ""

    def get_experiment_config_and_base_dir(self, **props: Any) -> tuple[ProbeConfig, str]:
        base = f"{self.base_dir}/job{props['job']}"
        return ProbeConfig(seed=props["job"], sleep_s=props["sleep_s"], record=self.record, base_dir=base), base

    def run_experiment_config(self, config: ProbeConfig) -> dict[str, Any]:
        start = time.time()
        print(f"job {config.seed} on gpu {os.environ.get('CUDA_VISIBLE_DEVICES')}")
        time.sleep(config.sleep_s)
        return {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}

    def agg_results(self, results: list[GPUJobResult]) -> list[Any]:
        return [r.result for r in results]


def test_strict_configs_name_unknown_attributes_and_take_overrides():
    cfg = ThresholdSearch(base_dir="x", prop="value", range=(10, 100), precision=1.0)
    with pytest.raises(InvalidConfigurationError, match="'precison'.*did you mean 'precision'"):
        cfg.precison = 2  # type: ignore[attr-defined]
    cfg.apply_overrides(["precision=0.5", "sweep_props={'seed': [1, 2]}", "base_dir=out/run"])
    assert (cfg.precision, cfg.sweep_props, cfg.base_dir) == (0.5, {"seed": [1, 2]}, "out/run")
    with pytest.raises(InvalidConfigurationError, match="range"):
        ThresholdSearch(base_dir="x", prop="value", range=(5, 1), precision=1.0).finalize()
    with pytest.raises(InvalidConfigurationError, match="no attribute 'bogus'"):
        cfg.apply_overrides(["bogus=1"])
    nested = ThresholdSearch(base_dir="x", prop="value", range=(10, 100), precision=1.0,
                             base_experiment_config=ProbeConfig())
    seen = []
    command = main(ThresholdSearch)(seen.append)
    with pytest.raises(InvalidConfigurationError, match="ProbeConfig has no attribute 'sed'"):
        nested.apply_overrides(["base_experiment_config.sed=5"])
    nested.apply_overrides(["base_experiment_config.seed=5", "base_experiment_config.record=log.txt"])
    assert (nested.base_experiment_config.seed, nested.base_experiment_config.record) == (5, "log.txt")
    nested.finalize()
    assert nested.base_experiment_config._finalized  # nested configs finalised with their parent
    command(["base_dir=cli", "prop=value", "range=(1, 9)", "precision=0.5"])
    assert seen[0].range == (1, 9) and seen[0].base_dir == "cli" and seen[0]._finalized
    with pytest.raises(InvalidConfigurationError, match="ThresholdSearch.prop is required"):
        main(ThresholdSearch)(seen.append)(["base_dir=cli"])


def test_gpus_from_the_environment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert visible_gpus() == ["0", "1", "2", "3"]
    assert visible_gpus(max_gpus=2) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def _search(tmp_path: Path, **kw: Any) -> ThresholdSearch:
    return ThresholdSearch(base_dir=str(tmp_path / "bs"), prop="value", range=(10, 100), precision=1,
                           success_direction_lower=True, sweep_props={"seed": [0, 1, 2, 3]},
                           record=str(tmp_path / "jobs.jsonl"), **kw)


def test_binary_search_takes_seven_rounds_and_brackets_the_threshold(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    [(achieved, failed)] = run_binary_searches([_search(tmp_path)], simultaneous_jobs_per_gpu=2, db_url=db_url)
    jobs = [json.loads(line) for line in (tmp_path / "jobs.jsonl").read_text().splitlines()]
    assert len(jobs) == 28  # 7 rounds x 4 seeds, each run once
    assert len({j["value"] for j in jobs}) == 7
    assert failed[0] < THRESHOLD <= achieved[0]
    assert achieved[0] - failed[0] <= 1
    [pkl] = (tmp_path / "bs").glob("binary_search_results_*.pkl")
    data = pickle.loads(pkl.read_bytes())
    lo, hi = data["search_range"]
    assert lo < THRESHOLD <= hi and hi - lo <= 1 and data["total_time"] > 0
    assert len(data["rounds"]) == 7
    # the raising seed: success None with its error, once per round, and the search went on
    assert len(data["error_results"]) == 7
    value, errors = data["error_results"][0]
    assert [e.success for e in errors] == [None] and "seed 3 always fails" in errors[0].error
    assert errors[0].job.props["seed"] == 3
    first = tmp_path / "bs" / "v55.0000_s0" / "experiment_output.log"
    assert first.read_text().startswith("probing 55.0 seed 0")
    assert "RuntimeError: seed 3 always fails" in (first.parent.parent / "v55.0000_s3" / first.name).read_text()
    assert pkl.with_suffix(".csv").read_text().count("\n") == 8
    # run again: the finished search runs nothing and returns the same
    again = run_binary_searches([_search(tmp_path)], simultaneous_jobs_per_gpu=2, db_url=db_url)
    assert again == [(achieved, failed)] or again[0][0][0] == achieved[0]
    assert len((tmp_path / "jobs.jsonl").read_text().splitlines()) == 28


def test_free_slot_on_any_gpu_takes_the_next_job_never_more_than_k(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    lengths = [0.9, 0.2, 0.2, 0.2, 0.9, 0.2, 0.2, 0.2] * 3
    # one grid search per job (its own length): 24 searches sharing one pool
    grids = [SleepGrid(base_dir=str(tmp_path / f"grid{i}"), sweep_props={"job": [i], "sleep_s": [s]})
             for i, s in enumerate(lengths)]
    results = run_grid_searches(grids, max_gpus=4, simultaneous_jobs_per_gpu=2, db_url=db_url)
    runs = [r[0] for r in results]
    assert {r["gpu"] for r in runs} == {"0", "1", "2", "3"}
    per_gpu_max = {}
    for gpu in "0123":
        spans = [(r["start"], r["end"]) for r in runs if r["gpu"] == gpu]
        events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
        level = peak = 0
        for _, step in events:
            level += step
            peak = max(peak, level)
        per_gpu_max[gpu] = peak
    assert max(per_gpu_max.values()) <= 2, per_gpu_max
    assert max(per_gpu_max.values()) == 2, per_gpu_max
    # Round-robin would give every long job (indices 0, 4, 8, ...) to GPU 0 while the other
    # GPUs idle; here they go to whichever slot is free.
    long_gpus = {r["gpu"] for r, length in zip(runs, lengths, strict=True) if length > 0.5}
    assert len(long_gpus) >= 2, long_gpus
    log_text = (tmp_path / "grid0" / "job0" / "experiment_output.log").read_text()
    assert log_text.startswith("job 0 on gpu ")
    [pkl] = (tmp_path / "grid3").glob("grid_search_results_*.pkl")
    data = pickle.loads(pkl.read_bytes())
    assert data["results"][0].success is True and data["results"][0].gpu_id in "0123"
    assert data["results"][0].out_file.endswith("job3/experiment_output.log")


DRIVER = """
import sys
sys.path[:0] = [{root!r}, {root!r} + "/tests"]
from test_sweeps_runner import ThresholdSearch
from eqflow.sweeps import run_binary_searches
cfg = ThresholdSearch(base_dir={base!r}, prop="value", range=(10, 100), precision=1,
                      sweep_props={{"seed": [0, 1, 2, 3]}}, record={record!r}, sleep_s=0.3)
run_binary_searches([cfg], simultaneous_jobs_per_gpu=2, db_url={db!r})
"""


def test_a_killed_binary_search_resumes_where_it_was(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    cfg = _search(tmp_path, sleep_s=0.3)
    exp_id = search_exp_id("binary", cfg)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(root=str(ROOT), base=cfg.base_dir, record=cfg.record, db=db_url))
    driver = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, start_new_session=True)
    try:
        def rounds_done() -> int:
            rows = sql(db_url, "SELECT state->>'round' FROM sweep_searches WHERE exp_id = %s", (exp_id,))
            return int(rows[0][0]) if rows and rows[0][0] else 0
        assert wait_for(lambda: rounds_done() >= 3, timeout=60)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver, mid-round
        driver.wait(timeout=10)
        at_kill = rounds_done()
        for (pid,) in sql(db_url, "SELECT pid FROM pools WHERE status = 'running'"):
            os.killpg(int(pid), signal.SIGKILL)  # and its pool (its own session), as if its node were lost
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    sql(db_url, "UPDATE tasks SET lease_expires_at = now() WHERE status = 'running'")  # the dead pool's leases
    [(achieved, failed)] = run_binary_searches([cfg], simultaneous_jobs_per_gpu=2, db_url=db_url)
    assert failed[0] < THRESHOLD <= achieved[0]
    [(n_tasks, n_values)] = sql(db_url, "SELECT count(*), count(DISTINCT payload) FROM tasks WHERE exp_id = %s",
                                (exp_id,))
    assert (n_tasks, n_values) == (28, 28), "rounds done before the kill were not submitted again"
    [(state,)] = sql(db_url, "SELECT state FROM sweep_searches WHERE exp_id = %s", (exp_id,))
    assert state["round"] == 7 and at_kill >= 3
