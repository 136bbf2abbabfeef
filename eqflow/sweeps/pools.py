"""The worker pools a sweep driver starts for itself: ordinary eqflow pools
(``python -m eqflow.workers.pool``) as child processes, with the environment a sweep needs
(the database URL, the GPUs a pool may use)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from eqflow.workers.launchers import PoolSpec

log = logging.getLogger("eqflow.sweeps")

IDLE_EXIT_S = 120.0


@dataclass
class SweepPools:
    """Pools started by one driver; :meth:`stop` gives back what they hold and waits for them."""

    db_url: str
    log_dir: Path | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    specs: list[tuple[PoolSpec, dict[str, str]]] = field(default_factory=list)
    restarts: int = 0

    def start(self, spec: PoolSpec, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        spec.db_url = self.db_url
        if spec.idle_exit is None:
            spec.idle_exit = IDLE_EXIT_S  # a pool whose driver was killed does not linger for ever
        self.specs.append((spec, dict(env or {})))
        proc = self._popen(spec, env or {})
        self.procs.append(proc)
        log.info("sweep pool started", extra={"pool": spec.name, "pid": proc.pid, "workers": spec.workers,
                                               "types": spec.task_types})
        return proc

    def _popen(self, spec: PoolSpec, env: dict[str, str]) -> subprocess.Popen[bytes]:
        environ = {**os.environ, "EQFLOW_LAUNCHER": "local", **spec.environment(), **env}
        out: int | object = subprocess.DEVNULL
        handle = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.log_dir / f"{spec.name}-{time.time_ns()}.log", "wb")  # noqa: SIM115
            out = handle
        proc = subprocess.Popen(spec.argv(), stdout=out, stderr=subprocess.STDOUT,  # type: ignore[arg-type]
                                stdin=subprocess.DEVNULL, env=environ, start_new_session=True)
        if handle is not None:
            handle.close()  # the child has its own copy
        return proc

    def alive(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def revive(self, max_restarts: int = 5) -> None:
        """Start again the pools that exited (idle for IDLE_EXIT_S, or crashed) while the
        driver still has work for them."""
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                self.restarts += 1
                if self.restarts > max_restarts:
                    raise RuntimeError(f"a sweep pool exited {self.restarts} times (last exit status "
                                       f"{proc.returncode}); see its log (eqflow -v)")
                spec, env = self.specs[i]
                log.warning("sweep pool exited; starting it again", extra={"pool": spec.name,
                                                                           "exit": proc.returncode})
                self.procs[i] = self._popen(spec, env)

    def stop(self, wait_s: float = 30.0) -> None:
        """SIGTERM: each pool returns its unfinished tasks to the queue and exits."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs.clear()
        self.specs.clear()
