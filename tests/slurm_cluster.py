"""A real single-node SLURM cluster (Debian's slurm-wlm + munge) started without systemd.

munged runs as the munge user on a private socket; slurmctld and slurmd run as root with a
generated slurm.conf on free ports. Accounting storage is off (sacct needs slurmdbd and a
MariaDB server), so finished jobs are read back with scontrol.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eqflow.db.embedded import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")


def missing() -> str | None:
    """Why a cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "the test SLURM cluster runs its daemons as root"
    for exe in (*DAEMONS, "sbatch", "squeue", "scancel", "scontrol"):
        if shutil.which(exe) is None and not Path(f"/usr/sbin/{exe}").exists():
            return f"{exe} not installed (Debian: apt-get install slurm-wlm munge)"
    return None


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eqflow-slurm-"))
        os.chmod(self.dir, 0o755)
        self.conf = self.dir / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.pids: list[int] = []

    def start(self) -> None:
        munge_dir = self.dir / "munge"
        munge_dir.mkdir(mode=0o755)
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(128))
        shutil.chown(munge_dir, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        sock = munge_dir / "munge.sock"
        subprocess.run(["runuser", "-u", "munge", "--", _exe("munged"), f"--socket={sock}",
                        f"--key-file={key}", f"--pid-file={munge_dir / 'munged.pid'}",
                        f"--log-file={munge_dir / 'munged.log'}", f"--seed-file={munge_dir / 'seed'}"],
                       check=True, capture_output=True, text=True)
        self.pids.append(int((munge_dir / "munged.pid").read_text()))
        for sub in ("state", "spool", "log"):
            (self.dir / sub).mkdir()
        host = socket.gethostname()
        self.conf.write_text(f"""ClusterName=eqflowtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
StateSaveLocation={self.dir}/state
SlurmdSpoolDir={self.dir}/spool
SlurmctldPidFile={self.dir}/slurmctld.pid
SlurmdPidFile={self.dir}/slurmd.pid
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmctldLogFile={self.dir}/log/slurmctld.log
SlurmdLogFile={self.dir}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
KillWait=10
MinJobAge=600
NodeName={host} CPUs={os.cpu_count() or 1} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([_exe(daemon), "-c"], check=True, env=self.env, capture_output=True, text=True)
            self.pids.append(int(_wait_file(self.dir / f"{daemon}.pid").read_text()))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if out.stdout.strip() == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM node never became idle: {self.log_tail()}")

    def log_tail(self) -> str:
        logs = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.dir / "log" / name
            if path.exists():
                logs.append(name + ":\n" + "\n".join(path.read_text().splitlines()[-10:]))
        return "\n".join(logs)

    def stop(self) -> None:
        for pid in reversed(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        shutil.rmtree(self.dir, ignore_errors=True)


def _wait_file(path: Path, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.1)
    return path


# The `slurm` fixture (registered in conftest.py): one cluster per test module,
# SLURM_CONF pointing at it meanwhile; skipped, saying why, where SLURM is not installed.
@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    why = missing()
    if why:
        pytest.skip(f"no SLURM here: {why}")
    cluster = SlurmCluster()
    cluster.start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    cluster.stop()
