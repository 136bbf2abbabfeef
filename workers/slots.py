"""Worker slots: long-lived worker processes that run one task at a time.

Each slot is a spawned process in its own session, so a task that hangs past its timeout is
killed with everything it started, and the slot is replaced. A memory limit is an address-space
limit (RLIMIT_AS) set in the worker; a task that exceeds it fails with MemoryError.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing as mp
import os
import resource
import shlex
import signal
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger("eqflow.pool")


@dataclass(frozen=True)
class TaskSpec:
    """What a pool runs: a Python callable ``module:function`` or a shell command template.

    The template may use {payload} (shell-quoted), {payload_file} (a file holding the
    payload) and {task_id}; the command's stdout is the result, a non-zero exit a failure.
    """

    fn: str | None = None
    cmd: str | None = None

    def __post_init__(self) -> None:
        if (self.fn is None) == (self.cmd is None):
            raise ValueError("give exactly one of a task function (module:function) or a command template")
        if self.fn is not None:
            module_name, _, attr = self.fn.partition(":")
            if not module_name or not attr:
                raise ValueError(f"task function must be 'module:function', got {self.fn!r}")


_functions: dict[str, Callable[[str], str]] = {}


def load_function(spec: str) -> Callable[[str], str]:
    fn = _functions.get(spec)
    if fn is None:
        module_name, _, attr = spec.partition(":")
        fn = getattr(importlib.import_module(module_name), attr)
        if not callable(fn):
            raise TypeError(f"{spec} is not callable")
        _functions[spec] = fn
    return fn


def run_task(spec: TaskSpec, task_id: int, payload: str) -> tuple[bool, str]:
    """Run one task here: (ok, result or error text)."""
    try:
        if spec.fn is not None:
            result = load_function(spec.fn)(payload)
            if not isinstance(result, str):
                return False, f"task function returned {type(result).__name__}, not str"
            return True, result
        return _run_command(spec.cmd or "", task_id, payload)
    except MemoryError:
        return False, "memory limit exceeded (MemoryError)\n" + traceback.format_exc()
    except BaseException:  # any task error becomes a failure report; the worker lives on
        return False, traceback.format_exc()


def _run_command(template: str, task_id: int, payload: str) -> tuple[bool, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".payload", delete=False) as handle:
        handle.write(payload)
    try:
        cmd = template.format(payload=shlex.quote(payload), payload_file=shlex.quote(handle.name),
                              task_id=task_id)
        proc = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    finally:
        os.unlink(handle.name)
    if proc.returncode != 0:
        return False, f"command exited with {proc.returncode}: {proc.stderr[-2000:]}"
    return True, proc.stdout.strip()


def _slot_main(conn: Connection, env: dict[str, str], mem_limit_mb: int | None) -> None:
    os.setsid()  # own process group: a timeout kills the task and its children together
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool decides when workers stop
    os.environ.update(env)
    if mem_limit_mb is not None:
        limit = mem_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the pool is gone (killed): nothing left to do
            return
        if message is None:
            return
        spec, task_id, payload = message
        conn.send(run_task(spec, task_id, payload))


class Slot:
    """One worker process; runs one task at a time."""

    def __init__(self, index: int, env: dict[str, str], mem_limit_mb: int | None) -> None:
        self.index = index
        self.env = env
        self.mem_limit_mb = mem_limit_mb
        self.task: Any = None
        self.started_at = 0.0
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_slot_main, args=(child, self.env, self.mem_limit_mb), daemon=True,
                                name=f"eqflow-worker-{self.index}")
        self.proc.start()
        child.close()

    @property
    def busy(self) -> bool:
        return self.task is not None

    def submit(self, spec: TaskSpec, task: Any) -> None:
        """Hand a task to the worker; a worker that died while idle (killed, OOM) is replaced
        first, so its death costs nothing but a restart."""
        if (why := self.died()) is not None:
            self._replace(why)
        self.task = task
        self.started_at = time.monotonic()
        try:
            self.conn.send((spec, task.task_id, task.payload))
        except OSError as exc:  # died between the check and the send
            self._replace(f"{self.died() or 'worker pipe broken'} ({type(exc).__name__})")
            self.task = task
            self.conn.send((spec, task.task_id, task.payload))

    def replace_if_dead(self) -> None:
        """An idle worker that died (killed, OOM-killed) is replaced at once."""
        if not self.busy and (why := self.died()) is not None:
            self._replace(why)

    def _replace(self, why: str) -> None:
        log.warning("worker replaced", extra={"worker": self.index, "reason": why})
        self.restart()

    def take_result(self) -> tuple[Any, tuple[bool, str]]:
        outcome = self.conn.recv()
        task, self.task = self.task, None
        return task, outcome

    def died(self) -> str | None:
        """Why the process is gone, if it is."""
        if self.proc.is_alive():
            return None
        code = self.proc.exitcode
        if code is not None and code < 0:
            return f"worker process killed by signal {signal.Signals(-code).name}"
        return f"worker process exited with code {code}"

    def kill(self) -> None:
        """Kill the worker and everything it started."""
        if self.proc.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.kill()  # in case it had not yet made its own process group
        self.proc.join(timeout=5)

    def restart(self) -> None:
        self.kill()
        self.conn.close()
        self.task = None
        self._start()

    def close(self) -> None:
        if self.proc.is_alive() and not self.busy:
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.kill()
        self.conn.close()
