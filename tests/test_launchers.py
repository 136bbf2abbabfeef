"""Launchers: local, a real SLURM cluster, PBS's command-line contract, and remote through an Executor."""

import json
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from eqflow import TaskStatus, as_completed
from eqflow.workers import launchers
from eqflow.workers.launchers import (
    ExecutorLauncher,
    JobSpec,
    JobState,
    LocalLauncher,
    PbsLauncher,
    PoolSpec,
    SlurmLauncher,
    wait,
)
from tests.conftest import sql, wait_for

ROOT = Path(__file__).resolve().parents[1]




def test_local_launcher_runs_and_cancels_a_pool(queue, db_url):
    launcher = LocalLauncher()
    futs = queue.submit_many("l", 1, [json.dumps({"seconds": 0})] * 5)
    job = launcher.start(PoolSpec([1], fn="eqflow.workers.tasks:sleep", db_url=db_url, name="loc"))
    assert launcher.status(job) is JobState.RUNNING
    assert len(list(as_completed(futs, timeout=60))) == 5
    launcher.cancel(job)  # SIGTERM: the pool exits cleanly
    assert wait(launcher, job, timeout=30) is JobState.DONE
    assert sql(db_url, "SELECT launcher, pid::text, status FROM pools") == [("local", job, "stopped")]


def test_the_database_password_never_reaches_a_command_line(queue, db_url, tmp_path):
    import psycopg

    password = psycopg.conninfo.conninfo_to_dict(db_url)["password"]
    launcher = LocalLauncher()
    job = launcher.start(PoolSpec([1], fn="eqflow.workers.tasks:sleep", db_url=db_url, name="secret"))
    try:
        assert wait_for(lambda: sql(db_url, "SELECT count(*) FROM pools WHERE status = 'running'") == [(1,)])
        cmdline = Path(f"/proc/{job}/cmdline").read_bytes().decode()
        assert "secret" in cmdline and password not in cmdline  # the pool did connect: from its environment
    finally:
        launcher.cancel(job)
        wait(launcher, job, timeout=30)
    job_spec = JobSpec(output_dir=str(tmp_path))
    text = SlurmLauncher(job_spec).script(PoolSpec([1], fn="m:f", db_url="postgresql://u:s3cr3t@h/db"))
    assert "s3cr3t" not in text
    [secret] = [p for p in tmp_path.iterdir() if "eqflow_db_url" in p.name]
    assert secret.read_text() == "postgresql://u:s3cr3t@h/db" and secret.stat().st_mode & 0o777 == 0o600
    assert f'export EQFLOW_DB_URL="$(cat {secret})"' in text


# -- SLURM ------------------------------------------------------------------------------------


def slurm_job(tmp_path):
    return JobSpec(nodes=1, ppn=1, walltime="00:10:00", queue="debug", job_name="eqflow-test",
                   output_dir=str(tmp_path), workdir=str(ROOT))


def test_slurm_pool_job_runs_tasks_and_finishes(slurm, queue, db_url, tmp_path):
    launcher = SlurmLauncher(slurm_job(tmp_path))
    futs = queue.submit_many("s", 2, [json.dumps({"x": [1, 2]})] * 8)
    job = launcher.start(PoolSpec([2], fn="eqflow.workers.tasks:ackley", workers=2, idle_exit=2, db_url=db_url,
                                  name="slurm-pool"))
    assert job.isdigit()
    assert wait_for(lambda: launcher.status(job) in (JobState.RUNNING, JobState.DONE)), slurm.log_tail()
    assert len(list(as_completed(futs, timeout=120))) == 8
    assert all(f.status is TaskStatus.COMPLETE for f in futs)
    assert wait(launcher, job, timeout=120) is JobState.DONE, slurm.log_tail()
    [(launcher_name, job_id, status)] = sql(db_url, "SELECT launcher, job_id, status FROM pools")
    assert (launcher_name, job_id, status) == ("slurm", job, "stopped")
    outputs = list(tmp_path.glob("eqflow-test.*.out"))
    assert outputs, "sbatch --output file missing"


def test_scancel_returns_the_jobs_tasks_to_the_queue(slurm, queue, db_url, tmp_path):
    launcher = SlurmLauncher(slurm_job(tmp_path))
    futs = queue.submit_many("s", 3, [json.dumps({"seconds": 120})] * 2)
    job = launcher.start(PoolSpec([3], fn="eqflow.workers.tasks:sleep", workers=2, db_url=db_url))
    assert wait_for(lambda: queue.stats("s").get(3, {}).get("running") == 2), slurm.log_tail()
    assert launcher.status(job) is JobState.RUNNING
    launcher.cancel(job)
    assert wait(launcher, job, timeout=60) is JobState.CANCELED
    assert wait_for(lambda: all(f.status is TaskStatus.QUEUED for f in futs), timeout=30)


def test_remote_launch_through_an_executor(slurm, queue, db_url, tmp_path):
    """The Globus Compute path, with a local process pool standing in for the cloud."""
    with ProcessPoolExecutor(1) as executor:
        remote = ExecutorLauncher(executor, "slurm", slurm_job(tmp_path))
        fut = queue.submit("r", 4, json.dumps({"seconds": 0}))
        job = remote.start(PoolSpec([4], fn="eqflow.workers.tasks:sleep", idle_exit=2, db_url=db_url))
        assert fut.result(timeout=120) == json.dumps({"seconds": 0})
        assert wait(remote, job, timeout=120) is JobState.DONE
        with pytest.raises(ValueError, match="would not outlive"):
            ExecutorLauncher(executor, "local")


def test_sbatch_script_has_the_resources_and_a_quoted_command(tmp_path):
    job = JobSpec(nodes=2, ppn=8, walltime="02:00:00", queue="gpu", project="proj1", output_dir=str(tmp_path),
                  setup=["module load python"], directives=["--gres=gpu:4"], env={"OMP_NUM_THREADS": "1"})
    pool = PoolSpec([1, 2], cmd="run {payload}; echo 'x y'", workers=4, db_url="postgresql://u:p@h/db")
    text = SlurmLauncher(job).script(pool)
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --time=02:00:00",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj1", "#SBATCH --gres=gpu:4",
                 "module load python", "export OMP_NUM_THREADS=1", "export EQFLOW_LAUNCHER=slurm"):
        assert line in text
    assert "--cmd 'run {payload}; echo '\"'\"'x y'\"'\"''" in text
    with pytest.raises(ValueError, match="walltime"):
        JobSpec(walltime="two hours")


@pytest.mark.parametrize("out,expected", [("4242\n", "4242"), ("4243;cluster2\n", "4243")])
def test_parse_sbatch(out, expected):
    assert launchers.parse_sbatch(out) == expected


@pytest.mark.parametrize("out,expected", [
    ("COMPLETED\n", JobState.DONE), ("CANCELLED by 0\n", JobState.CANCELED), ("TIMEOUT\n", JobState.FAILED),
    ("RUNNING\n", JobState.RUNNING), ("", JobState.UNKNOWN)])
def test_parse_sacct(out, expected):
    assert launchers.parse_sacct(out) == expected


# -- PBS: its command-line contract (no PBS server can be installed here) --------------------------
QSTAT_RECORDED = {
    "queued": "Job Id: 77.pbs01\n    Job_Name = eqflow-pool\n    job_state = Q\n    queue = workq\n",
    "running": "Job Id: 77.pbs01\n    job_state = R\n    exec_host = node1/0*8\n",
    "finished": "Job Id: 77.pbs01\n    job_state = F\n    Exit_status = 0\n",
    "deleted": "Job Id: 77.pbs01\n    job_state = F\n    Exit_status = 271\n",
    "torque-done": "Job Id: 77.torque\n    job_state = C\n    exit_status = 1\n",
}


@pytest.mark.parametrize("case,expected", [
    ("queued", JobState.PENDING), ("running", JobState.RUNNING), ("finished", JobState.DONE),
    ("deleted", JobState.CANCELED), ("torque-done", JobState.FAILED)])
def test_parse_qstat(case, expected):
    assert launchers.parse_qstat(QSTAT_RECORDED[case]) == expected


def stand_in_pbs(tmp_path: Path, job_id: str) -> tuple[Path, Path]:
    """Stand-in qsub/qstat/qdel (no PBS server here) that print recorded PBS output and log their
    arguments to calls.log; qsub keeps a copy of the script as submitted.sh."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    scripts = {
        "qsub": f'echo "qsub $*" >> {calls}; cp "$1" {tmp_path}/submitted.sh; echo {job_id}',
        "qstat": f'echo "qstat $*" >> {calls}; printf "%s" {json.dumps(QSTAT_RECORDED["running"])}',
        "qdel": f'echo "qdel $*" >> {calls}',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir, calls


def test_pbs_launcher_speaks_qsub_qstat_qdel(tmp_path):
    bin_dir, calls = stand_in_pbs(tmp_path, "77.pbs01")
    launcher = PbsLauncher(JobSpec(nodes=1, ppn=4, walltime="00:30:00", queue="workq", project="P1",
                                   output_dir=str(tmp_path)), bin_dir=str(bin_dir))
    job = launcher.start(PoolSpec([1], fn="eqflow.workers.tasks:noop"))
    assert job == "77.pbs01"
    assert launcher.status(job) is JobState.RUNNING
    launcher.cancel(job)
    log = calls.read_text().splitlines()
    assert log[0].startswith("qsub ") and log[1] == "qstat -x -f 77.pbs01" and log[2] == "qdel 77.pbs01"
    submitted = (tmp_path / "submitted.sh").read_text()
    for line in ("#PBS -l select=1:ncpus=4", "#PBS -l walltime=00:30:00", "#PBS -q workq", "#PBS -A P1",
                 "export EQFLOW_LAUNCHER=pbs"):
        assert line in submitted


def test_missing_scheduler_command_is_a_clear_error(tmp_path):
    launcher = SlurmLauncher(JobSpec(output_dir=str(tmp_path)), bin_dir=str(tmp_path / "nowhere"))
    with pytest.raises(launchers.LaunchError, match="sbatch not found"):
        launcher.start(PoolSpec([1], fn="eqflow.workers.tasks:noop"))
