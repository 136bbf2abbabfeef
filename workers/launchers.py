"""Launchers start worker pools: a local subprocess, a SLURM or PBS job, or any of those on
a remote login node through a ``concurrent.futures.Executor`` (Globus Compute in production).

All share one interface: ``start(pool) -> job id``, ``status(job id)``, ``cancel(job id)``,
``wait(job id, timeout)``. The pool itself records its row in ``pools`` once it runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Protocol


class JobState(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELED)


class LaunchError(RuntimeError):
    """A scheduler command failed; the message carries its output."""


@dataclass
class PoolSpec:
    """The pool to run: the arguments of ``python -m eqflow.workers.pool``."""

    task_types: list[int]
    fn: str | None = None
    cmd: str | None = None
    name: str = "pool"
    workers: int | None = None
    batch_size: int = 0
    threshold: int = 1
    threads: bool = False
    timeout: float | None = None
    mem_limit_mb: int | None = None
    gpu: bool = False
    workers_per_gpu: int = 1
    lease: float = 60.0
    idle_exit: float | None = None
    db_url: str | None = None
    python: str = sys.executable
    prefetch: bool = True

    def argv(self) -> list[str]:
        if (self.fn is None) == (self.cmd is None):
            raise ValueError("a pool needs exactly one of fn (module:function) or cmd")
        args = [self.python, "-m", "eqflow.workers.pool", "--types", *map(str, self.task_types),
                "--name", self.name, "--batch-size", str(self.batch_size), "--threshold", str(self.threshold),
                "--lease", str(self.lease)]
        args += ["--fn", self.fn] if self.fn else ["--cmd", self.cmd or ""]
        # The database URL (with its password) never goes on the command line, where `ps` shows
        # it to every user: it travels in the environment (see environment()).
        optional: dict[str, Any] = {"--workers": self.workers, "--timeout": self.timeout,
                                    "--mem-limit-mb": self.mem_limit_mb, "--idle-exit": self.idle_exit}
        for flag, value in optional.items():
            if value is not None:
                args += [flag, str(value)]
        if self.threads:
            args.append("--threads")
        if not self.prefetch:
            args.append("--no-prefetch")
        if self.gpu:
            args += ["--gpu", "--workers-per-gpu", str(self.workers_per_gpu)]
        return args

    def environment(self) -> dict[str, str]:
        """What the pool process needs in its environment: the database URL, if one is set."""
        return {"EQFLOW_DB_URL": self.db_url} if self.db_url else {}


@dataclass
class JobSpec:
    """Scheduler resources for a pool job."""

    nodes: int = 1
    ppn: int = 1
    walltime: str = "01:00:00"
    queue: str | None = None  # SLURM partition / PBS queue
    project: str | None = None  # SLURM account / PBS project
    job_name: str = "eqflow-pool"
    output_dir: str = "."
    workdir: str = "."
    setup: list[str] = field(default_factory=list)  # e.g. "module load python"
    directives: list[str] = field(default_factory=list)  # extra #SBATCH / #PBS lines
    env: dict[str, str] = field(default_factory=dict)
    template: str | None = None  # path of a template to use instead of the shipped one

    def __post_init__(self) -> None:
        if not re.fullmatch(r"\d+(-\d+)?(:\d{2}){0,2}", self.walltime):
            raise ValueError(f"walltime must look like HH:MM:SS, got {self.walltime!r}")
        if self.nodes < 1 or self.ppn < 1:
            raise ValueError("nodes and ppn must be >= 1")


class Launcher(Protocol):
    kind: str

    def start(self, pool: PoolSpec) -> str: ...
    def status(self, job_id: str) -> JobState: ...
    def cancel(self, job_id: str) -> None: ...


def wait(launcher: Launcher, job_id: str, timeout: float | None = None, interval: float = 0.5) -> JobState:
    """Block until the job finishes (or timeout); returns its last state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state = launcher.status(job_id)
        if state.finished or (deadline is not None and time.monotonic() >= deadline):
            return state
        time.sleep(interval)


# -- local ----------------------------------------------------------------------------------
class LocalLauncher:
    """A pool as a child process of this one (its own session, so cancel reaches its workers)."""

    kind = "local"

    def __init__(self, log_dir: str | None = None) -> None:
        self.log_dir = log_dir
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, pool: PoolSpec) -> str:
        out: Any = subprocess.DEVNULL
        if self.log_dir:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            out = open(Path(self.log_dir) / f"{pool.name}-{time.time_ns()}.log", "wb")  # noqa: SIM115
        env = dict(os.environ, EQFLOW_LAUNCHER="local", **pool.environment())
        proc = subprocess.Popen(pool.argv(), stdout=out, stderr=subprocess.STDOUT if self.log_dir else out,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self._children[str(proc.pid)] = proc
        return str(proc.pid)

    def status(self, job_id: str) -> JobState:
        child = self._children.get(job_id)
        if child is not None:
            code = child.poll()
            if code is None:
                return JobState.RUNNING
            return JobState.DONE if code == 0 else JobState.CANCELED if code < 0 else JobState.FAILED
        try:
            os.kill(int(job_id), 0)
        except ProcessLookupError:
            return JobState.UNKNOWN  # not ours and gone: exit status unknowable
        except PermissionError:
            pass
        return JobState.RUNNING

    def cancel(self, job_id: str) -> None:
        """SIGTERM: the pool returns its unfinished tasks and exits."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(job_id), signal.SIGTERM)


# -- batch schedulers -----------------------------------------------------------------------
def _run(cmd: list[str], what: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise LaunchError(f"{what}: {cmd[0]} not found on PATH") from None
    if proc.returncode != 0:
        raise LaunchError(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def render_script(template_name: str, job: JobSpec, pool: PoolSpec, directive: str, extra: dict[str, str]) -> str:
    if job.template:
        text = Path(job.template).read_text()
    else:
        text = (resources.files("eqflow.workers") / "templates" / template_name).read_text()
    values = {
        "job_name": job.job_name, "nodes": str(job.nodes), "ppn": str(job.ppn), "walltime": job.walltime,
        "output": str(Path(job.output_dir).resolve() / f"{job.job_name}.%j.out"),
        "directives": "\n".join(f"{directive} {d}" for d in job.directives),
        "workdir": shlex.quote(str(Path(job.workdir).resolve())),
        "setup": "\n".join(job.setup),
        "env": "\n".join(f"export {k}={shlex.quote(v)}" for k, v in job.env.items()) + _secret_env(job, pool),
        "command": shlex.join(pool.argv()),
        **extra,
    }
    return Template(text).substitute(values)


def _secret_env(job: JobSpec, pool: PoolSpec) -> str:
    """Lines that load the pool's secret environment (the database URL) from a file only its
    owner can read, so neither the job script nor the scheduler's records hold the password."""
    lines = []
    for key, value in pool.environment().items():
        folder = Path(job.output_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f".{job.job_name}-{key.lower()}-{time.time_ns()}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        lines.append(f'export {key}="$(cat {shlex.quote(str(path))})"')
    return ("\n" if lines else "") + "\n".join(lines)


def _write_script(job: JobSpec, text: str, suffix: str) -> Path:
    folder = Path(job.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job.job_name}-{time.time_ns()}.{suffix}"
    path.touch(mode=0o600)  # the script may carry the database URL
    path.write_text(text)
    return path


SLURM_STATES = {
    "PENDING": JobState.PENDING, "CONFIGURING": JobState.PENDING, "REQUEUED": JobState.PENDING,
    "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING, "SUSPENDED": JobState.RUNNING,
    "COMPLETED": JobState.DONE, "CANCELLED": JobState.CANCELED, "FAILED": JobState.FAILED,
    "TIMEOUT": JobState.FAILED, "NODE_FAIL": JobState.FAILED, "OUT_OF_MEMORY": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED, "DEADLINE": JobState.FAILED, "PREEMPTED": JobState.FAILED,
}


class _BatchLauncher:
    """What SLURM and PBS launchers share: a job spec, a bin folder, a script from a template."""

    template = ""
    directive = ""

    def __init__(self, job: JobSpec, bin_dir: str | None = None) -> None:
        self.job = job
        self.bin_dir = bin_dir

    def bin(self, name: str) -> str:
        return str(Path(self.bin_dir) / name) if self.bin_dir else name

    def queue_lines(self) -> list[str]:
        raise NotImplementedError

    def script(self, pool: PoolSpec) -> str:
        lines = self.queue_lines() + [f"{self.directive} {d}" for d in self.job.directives]
        return render_script(self.template, JobSpec(**{**asdict(self.job), "directives": []}), pool,
                             self.directive, {"directives": "\n".join(lines)})


class SlurmLauncher(_BatchLauncher):
    """``sbatch`` a script filled from workers/templates/sbatch.sh; ``squeue``/``sacct`` for
    status (``scontrol`` where accounting is off); ``scancel``."""

    kind = "slurm"
    template = "sbatch.sh"
    directive = "#SBATCH"

    def queue_lines(self) -> list[str]:
        lines = [f"#SBATCH --partition={self.job.queue}"] if self.job.queue else []
        return lines + ([f"#SBATCH --account={self.job.project}"] if self.job.project else [])

    def start(self, pool: PoolSpec) -> str:
        path = _write_script(self.job, self.script(pool), "sbatch")
        return parse_sbatch(_run([self.bin("sbatch"), "--parsable", str(path)], "sbatch"))

    def status(self, job_id: str) -> JobState:
        out = _run([self.bin("squeue"), "-h", "-j", job_id, "-o", "%T"], "squeue") if self._in_queue(job_id) else ""
        if out.strip():
            return SLURM_STATES.get(out.split()[0].strip(), JobState.UNKNOWN)
        try:
            return parse_sacct(_run([self.bin("sacct"), "-n", "-X", "-P", "-j", job_id, "-o", "State"], "sacct"))
        except LaunchError:  # accounting storage disabled: the controller still remembers recent jobs
            try:
                return parse_scontrol(_run([self.bin("scontrol"), "show", "job", job_id], "scontrol"))
            except LaunchError:
                return JobState.UNKNOWN

    def _in_queue(self, job_id: str) -> bool:
        # squeue exits non-zero for a job id the controller has forgotten
        proc = subprocess.run([self.bin("squeue"), "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True)
        return proc.returncode == 0

    def cancel(self, job_id: str) -> None:
        _run([self.bin("scancel"), job_id], "scancel")


def parse_sbatch(stdout: str) -> str:
    """``sbatch --parsable`` prints "<id>" or "<id>;<cluster>"."""
    match = re.match(r"\s*(\d+)", stdout)
    if not match:
        raise LaunchError(f"could not read a job id from sbatch output: {stdout!r}")
    return match.group(1)


def parse_sacct(stdout: str) -> JobState:
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return JobState.UNKNOWN
    return SLURM_STATES.get(lines[0].split()[0], JobState.UNKNOWN)  # "CANCELLED by 0" -> CANCELLED


def parse_scontrol(stdout: str) -> JobState:
    match = re.search(r"JobState=(\w+)", stdout)
    return SLURM_STATES.get(match.group(1), JobState.UNKNOWN) if match else JobState.UNKNOWN


PBS_STATES = {"Q": JobState.PENDING, "H": JobState.PENDING, "W": JobState.PENDING, "T": JobState.PENDING,
              "R": JobState.RUNNING, "E": JobState.RUNNING, "B": JobState.RUNNING, "S": JobState.RUNNING}


class PbsLauncher(_BatchLauncher):
    """``qsub`` a script filled from workers/templates/qsub.sh; ``qstat`` for status; ``qdel``."""

    kind = "pbs"
    template = "qsub.sh"
    directive = "#PBS"

    def queue_lines(self) -> list[str]:
        lines = [f"#PBS -q {self.job.queue}"] if self.job.queue else []
        return lines + ([f"#PBS -A {self.job.project}"] if self.job.project else [])

    def start(self, pool: PoolSpec) -> str:
        path = _write_script(self.job, self.script(pool), "qsub")
        job_id = _run([self.bin("qsub"), str(path)], "qsub").strip()
        if not job_id:
            raise LaunchError("qsub printed no job id")
        return job_id

    def status(self, job_id: str) -> JobState:
        try:
            return parse_qstat(_run([self.bin("qstat"), "-x", "-f", job_id], "qstat"))
        except LaunchError:
            try:  # Torque has no -x
                return parse_qstat(_run([self.bin("qstat"), "-f", job_id], "qstat"))
            except LaunchError:
                return JobState.UNKNOWN

    def cancel(self, job_id: str) -> None:
        _run([self.bin("qdel"), job_id], "qdel")


def parse_qstat(stdout: str) -> JobState:
    match = re.search(r"job_state\s*=\s*(\w)", stdout)
    if not match:
        return JobState.UNKNOWN
    state = match.group(1)
    if state in ("F", "C"):  # finished (PBS Pro) / completed (Torque)
        code = re.search(r"[Ee]xit_status\s*=\s*(-?\d+)", stdout)
        if code is None or int(code.group(1)) == 0:
            return JobState.DONE
        return JobState.CANCELED if int(code.group(1)) in (271, -11) else JobState.FAILED
    return PBS_STATES.get(state, JobState.UNKNOWN)


# -- remote, through an Executor -------------------------------------------------------------
def make_launcher(kind: str, job: dict[str, Any] | None = None, bin_dir: str | None = None) -> Launcher:
    if kind == "local":
        return LocalLauncher()
    if kind == "slurm":
        return SlurmLauncher(JobSpec(**(job or {})), bin_dir)
    if kind == "pbs":
        return PbsLauncher(JobSpec(**(job or {})), bin_dir)
    raise ValueError(f"unknown launcher {kind!r}: expected local, slurm or pbs")


# Module-level functions, so an executor (Globus Compute included) can serialize them by name.
def remote_start(kind: str, job: dict[str, Any], pool: dict[str, Any], bin_dir: str | None = None) -> str:
    return make_launcher(kind, job, bin_dir).start(PoolSpec(**pool))


def remote_status(kind: str, job: dict[str, Any], job_id: str, bin_dir: str | None = None) -> str:
    return make_launcher(kind, job, bin_dir).status(job_id).value


def remote_cancel(kind: str, job: dict[str, Any], job_id: str, bin_dir: str | None = None) -> None:
    make_launcher(kind, job, bin_dir).cancel(job_id)


class ExecutorLauncher:
    """Runs another launcher's calls through an Executor on the remote login node.

    In production ``executor`` is ``globus_compute_sdk.Executor(endpoint_id=...)``; any
    ``concurrent.futures.Executor`` works. ``kind`` is the launcher used over there.
    """

    kind = "globus"

    def __init__(self, executor: Executor, remote_kind: str, job: JobSpec | None = None,
                 bin_dir: str | None = None, timeout: float = 300.0) -> None:
        if remote_kind == "local":
            raise ValueError("a remote 'local' pool would not outlive the executor's task: use slurm or pbs")
        self.executor = executor
        self.remote_kind = remote_kind
        self.job = asdict(job or JobSpec())
        self.bin_dir = bin_dir
        self.timeout = timeout

    def start(self, pool: PoolSpec) -> str:
        fut = self.executor.submit(remote_start, self.remote_kind, self.job, asdict(pool), self.bin_dir)
        return str(fut.result(timeout=self.timeout))

    def status(self, job_id: str) -> JobState:
        fut = self.executor.submit(remote_status, self.remote_kind, self.job, job_id, self.bin_dir)
        return JobState(fut.result(timeout=self.timeout))

    def cancel(self, job_id: str) -> None:
        self.executor.submit(remote_cancel, self.remote_kind, self.job, job_id, self.bin_dir).result(
            timeout=self.timeout)
