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
import pickle
import resource
import select
import shlex
import signal
import struct
import subprocess
import tempfile
import time
import traceback
from collections import deque
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
        spec, tasks = message
        for task_id, payload in tasks:  # one outcome per task, sent as soon as it is known
            started = time.perf_counter()
            ok, value = run_task(spec, task_id, payload)
            _send_outcome(conn.fileno(), (ok, value, time.perf_counter() - started))


# Outcomes go back as frames of their own (an 8-byte length, then the pickle) written straight to
# the pipe: the pool reads whatever is waiting in one system call and splits it, where
# Connection.recv costs two reads and a poll (a new selector) per outcome; with short tasks that
# was most of the pool's own CPU. Tasks go out through the Connection (one message per several).
_LENGTH = struct.Struct("<Q")


def _send_outcome(fd: int, outcome: tuple[bool, str, float]) -> None:
    body = pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LENGTH.pack(len(body)) + body)
    while view:
        view = view[os.write(fd, view):]


def ready_fds(fds: list[int], timeout_s: float) -> set[int]:
    """The descriptors that are readable (or closed) within timeout_s: a bare poll(2), where
    multiprocessing's wait() builds and tears down a selector on every call."""
    if not fds:
        return set()
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return {fd for fd, _ in poller.poll(timeout_s * 1000)}


class Slot:
    """One worker process. It runs its tasks one at a time, in the order handed over; the pool
    may hand over a few at once (one message) when tasks are short, so the worker never waits
    for the pool between them. The first task in ``tasks`` is the one running."""

    def __init__(self, index: int, env: dict[str, str], mem_limit_mb: int | None) -> None:
        self.index = index
        self.env = env
        self.mem_limit_mb = mem_limit_mb
        self.tasks: deque[Any] = deque()
        self.started_at = 0.0  # when the running task started (as far as the pool can tell)
        self.queued_bytes = 0  # payload bytes handed over behind the running task
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self._inbox = bytearray()  # outcome bytes read from the pipe, not yet a whole frame
        self.proc = ctx.Process(target=_slot_main, args=(child, self.env, self.mem_limit_mb), daemon=True,
                                name=f"eqflow-worker-{self.index}")
        self.proc.start()
        child.close()

    @property
    def busy(self) -> bool:
        return bool(self.tasks)

    @property
    def task(self) -> Any:
        """The task running now (None when idle)."""
        return self.tasks[0] if self.tasks else None

    def submit(self, spec: TaskSpec, tasks: list[Any]) -> None:
        """Hand tasks to the worker (behind any it holds); a worker that died while idle
        (killed, OOM) is replaced first, so its death costs nothing but a restart."""
        if not self.tasks and (why := self.died()) is not None:
            self._replace(why)
        if not self.tasks:
            self.started_at = time.monotonic()
        self.tasks.extend(tasks)
        self.queued_bytes = sum(len(t.payload) for t in list(self.tasks)[1:])
        message = (spec, [(t.task_id, t.payload) for t in tasks])
        try:
            self.conn.send(message)
        except OSError as exc:  # died between the check and the send
            if len(self.tasks) > len(tasks):
                return  # it was running one: collect reports the death and hands these back
            self._replace(f"{self.died() or 'worker pipe broken'} ({type(exc).__name__})")
            self.tasks.extend(tasks)
            self.started_at = time.monotonic()
            self.conn.send(message)

    def replace_if_dead(self) -> None:
        """An idle worker that died (killed, OOM-killed) is replaced at once."""
        if not self.busy and (why := self.died()) is not None:
            self._replace(why)

    def _replace(self, why: str) -> None:
        log.warning("worker replaced", extra={"worker": self.index, "reason": why})
        self.restart()

    def take_results(self) -> list[tuple[Any, tuple[bool, str, float]]]:
        """The outcomes the worker has sent, (task, (ok, value, run seconds)), at least one:
        call when its pipe is readable. Raises EOFError/OSError when the worker is gone."""
        out = self._outcomes()
        while not out:  # part of a frame: the worker is writing the rest now (or died: EOF)
            self._read()
            out = self._outcomes()
        self.started_at = time.monotonic()
        if self.queued_bytes:
            self.queued_bytes = sum(len(t.payload) for t in list(self.tasks)[1:])
        return out

    def drain(self) -> list[tuple[Any, tuple[bool, str, float]]]:
        """The outcomes a dead (or just killed) worker sent before it went: read them all, so
        that the first task left is the one it was running and those behind it never started
        (a worker sends each outcome before it starts its next task)."""
        with contextlib.suppress(EOFError, OSError):
            while self.tasks and ready_fds([self.conn.fileno()], 0):
                self._read()
        return self._outcomes()

    def _read(self) -> None:
        """Append what the pipe holds (blocks until something comes); EOFError at its end."""
        chunk = os.read(self.conn.fileno(), 1 << 16)
        if not chunk:
            raise EOFError("worker pipe closed")
        self._inbox += chunk

    def _outcomes(self) -> list[tuple[Any, tuple[bool, str, float]]]:
        """The whole frames read so far, each paired with its task (the oldest one held)."""
        out, pos, inbox = [], 0, self._inbox
        while self.tasks and len(inbox) - pos >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(inbox, pos)
            end = pos + _LENGTH.size + size
            if len(inbox) < end:
                break
            out.append((self.tasks.popleft(), pickle.loads(inbox[pos + _LENGTH.size:end])))
            pos = end
        del inbox[:pos]
        return out

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

    def restart(self) -> list[Any]:
        """Kill and start afresh; returns the tasks it held behind the running one (never
        started: they go back to the pool's waiting line)."""
        self.kill()
        self.conn.close()
        unstarted = list(self.tasks)[1:]
        self.tasks.clear()
        self.queued_bytes = 0
        self._start()
        return unstarted

    def close(self) -> None:
        if self.proc.is_alive() and not self.busy:
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.kill()
        self.conn.close()
