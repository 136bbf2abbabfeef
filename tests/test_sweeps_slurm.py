"""ASHA trials as srun job steps inside an sbatch allocation, on the real single-node SLURM
cluster the test suite starts (tests/slurm_cluster.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from eqflow.sweeps import Result, SlurmCfg, Status, log
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def step_train(cfg: dict[str, Any]) -> None:
    """Logs the SLURM job step it runs in, so the test can see each trial was its own step."""
    step = int(os.environ.get("SLURM_STEP_ID", "-1"))
    for epoch in range(3):
        time.sleep(0.2)
        log({"loss": abs(cfg["parameter"] - 1) / (epoch + 1), "step": step,
             "ntasks": int(os.environ.get("SLURM_STEP_NUM_TASKS", "0"))}, epoch)




DRIVER = """
import sys
sys.path[:0] = [{root!r}, {root!r} + "/tests"]
from test_sweeps_slurm import step_train
from eqflow.sweeps import ASHA, Experiment, Grid
exp = Experiment(step_train, {{"parameter": Grid([0.5, 1.0, 1.5, 2.0])}}, name="Steps", local_dir={local!r},
                 asha=ASHA("loss", "min", reduction_factor=2, min_t=1, max_t=4))
exp.run(summary_interval_in_sec=2.0)
"""


def test_trials_run_as_srun_job_steps(slurm, db_url, tmp_path):
    assert SlurmCfg().srun() == "srun --exclusive --nodes=1 --ntasks=1"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT), local=str(tmp_path)))
    batch = tmp_path / "sweep.sbatch"
    batch.write_text(f"#!/bin/bash\n#SBATCH --ntasks=2\n#SBATCH --time=00:05:00\n"
                     f"#SBATCH --output={tmp_path}/sweep.%j.out\ncd {ROOT}\n{sys.executable} {driver}\n")
    env = dict(os.environ, EQFLOW_DB_URL=db_url)
    job = subprocess.run(["sbatch", "--parsable", str(batch)], env=env, capture_output=True, text=True, check=True)
    job_id = job.stdout.strip().split(";")[0]

    def finished() -> bool:
        out = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
        return "JobState=COMPLETED" in out or "JobState=FAILED" in out or "JobState=CANCELLED" in out

    assert wait_for(finished, timeout=150, interval=0.5), slurm.log_tail()
    output = "\n".join(p.read_text() for p in tmp_path.glob("sweep.*.out"))
    assert "at most 2 at once (srun job steps)" in output, output[-3000:]
    trials = Result("Steps", tmp_path, db_url=db_url).trials
    assert len(trials) == 4 and all(t.is_terminated() for t in trials), output[-3000:]
    assert {t.cfg["parameter"]: t.status for t in trials}[1.0] is Status.COMPLETED
    steps = [t.metrics["step"][0] for t in trials]
    assert all(s >= 0 for s in steps) and len(set(steps)) == 4, steps  # each trial its own job step
    assert all(t.metrics["ntasks"][0] == 1 for t in trials)
