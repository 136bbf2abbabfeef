"""The sandbox server: imports a spec once, then forks one locked-down child per candidate.

It runs as its own process (``python -I _sandbox_server.py``) with an empty environment, inside
bubblewrap where available (``eqflow.funsearch.sandbox`` starts it), and imports nothing from
eqflow, so a spec sees no evaluator state. The trusted side imports the small shared pieces from
here: the ``funsearch`` marker module, ``test_key`` and the message framing.

Per candidate the server forks a child (copy-on-write keeps what ``prepare`` built), which starts a
session, drops to the sandbox uid when the server is root, applies rlimits, enters a fresh working
directory, defines the candidate function in the spec module and runs the run function on every
test. The child writes its solutions back over a pipe; the server enforces the wall timeout, kills
everything the child left behind and scores each solution with the spec's own ``score`` (which the
candidate never touched: it ran in another process).

Protocol on stdin/stdout: 8-byte big-endian length, then a JSON object. The first request is the
``init`` message; after it, each request ``{"body": ...}`` gets one reply; EOF ends the server.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import linecache
import math
import os
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable
from typing import Any

MAX_ERROR_CHARS = 4000
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
# Modules a candidate may import. The child runs as an unprivileged uid that may not be able to
# read the interpreter's files (a pyenv under /root), so they are imported before any fork.
PRELOAD = ("math", "cmath", "itertools", "functools", "collections", "heapq", "bisect", "random", "statistics",
           "operator", "typing", "fractions", "decimal", "dataclasses", "copy", "string", "re")
PRELOAD_OPTIONAL = ("numpy", "numpy.linalg", "numpy.random")


# --- shared with the trusted side ------------------------------------------------------------------

def test_key(test: dict[str, Any]) -> str:
    """The canonical JSON of a test: its key in score dictionaries and in the database."""
    return json.dumps(test, sort_keys=True, separators=(",", ":"))


def install_marker() -> types.ModuleType:
    """Make ``import funsearch`` work for specs: ``funsearch.run`` and ``funsearch.evolve`` are
    identity decorators (the spec loader finds them in the source). An installed ``funsearch``
    package that already has both is left in place."""
    existing = sys.modules.get("funsearch")
    if existing is not None and hasattr(existing, "run") and hasattr(existing, "evolve"):
        return existing
    marker = types.ModuleType("funsearch", "Markers for FunSearch specs: @funsearch.run, @funsearch.evolve.")

    def run(function: Callable[..., Any]) -> Callable[..., Any]:
        return function

    def evolve(function: Callable[..., Any]) -> Callable[..., Any]:
        return function

    marker.run = run  # type: ignore[attr-defined]
    marker.evolve = evolve  # type: ignore[attr-defined]
    sys.modules["funsearch"] = marker
    return marker


def load_module(text: str, name: str, module_name: str) -> types.ModuleType:
    """Execute a spec's text as a fresh module (registered in sys.modules and linecache, so
    dataclasses work and tracebacks show the spec's lines)."""
    install_marker()
    filename = f"<spec {name}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    module = types.ModuleType(module_name)
    module.__file__ = filename
    sys.modules[module_name] = module
    try:
        exec(compile(text, filename, "exec"), module.__dict__)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return len(data).to_bytes(8, "big") + data


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def read_message(fd: int, deadline: float | None, max_bytes: int = 1 << 30) -> dict[str, Any] | None:
    """One framed message from ``fd``; None on a clean EOF before it. TimeoutError past ``deadline``
    (a ``time.monotonic`` value), EOFError when the peer goes away mid-message."""
    header = _read_exact(fd, 8, deadline, eof_ok=True)
    if header is None:
        return None
    size = int.from_bytes(header, "big")
    if size > max_bytes:
        raise ValueError(f"message of {size} bytes is over the {max_bytes}-byte limit")
    body = _read_exact(fd, size, deadline, eof_ok=False)
    assert body is not None
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ValueError("message is not a JSON object")
    return message


def _read_exact(fd: int, size: int, deadline: float | None, eof_ok: bool) -> bytes | None:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError("no reply in time")
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            if eof_ok and got == 0:
                return None
            raise EOFError("peer closed the pipe")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def trim(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"


# --- the server ------------------------------------------------------------------------------------

def _fingerprint(value: Any) -> bytes:
    """A return value rounded to 9 significant digits, so float noise does not split behaviours."""
    try:
        number = float(value)
    except Exception:
        return f"<{type(value).__name__}>;".encode()
    return f"{number:.9g};".encode()


class _Recorder:
    """Wraps the candidate function and hashes its first ``cap`` return values."""

    def __init__(self, cap: int) -> None:
        self.hash = hashlib.sha256()
        self.calls = 0
        self.cap = cap

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            value = function(*args, **kwargs)
            if self.calls < self.cap:
                self.calls += 1
                self.hash.update(_fingerprint(value))
            return value
        return recorded


class Server:
    def __init__(self, init: dict[str, Any]) -> None:
        self.name: str = init["spec_name"]
        self.function_name: str = init["function_name"]
        self.header: str = init["header"]
        self.tests: list[dict[str, Any]] = init["tests"]
        self.limits: dict[str, Any] = init["limits"]
        self.uid: int | None = init.get("uid")
        self.pid_namespace: bool = bool(init.get("pid_namespace"))
        self.max_result_bytes: int = int(init.get("max_result_bytes", 16 << 20))
        self.behaviour_calls: int = int(init.get("behaviour_calls", 100_000))
        if self.uid is not None and os.geteuid() != 0:
            raise PermissionError(f"cannot drop to uid {self.uid}: the server is not root")
        for module_name in PRELOAD:
            __import__(module_name)
        for module_name in PRELOAD_OPTIONAL:
            with contextlib.suppress(ImportError):
                __import__(module_name)
        self.module = load_module(init["spec_text"], self.name, "funsearch_spec")
        self.run = getattr(self.module, init["run_name"])
        score = getattr(self.module, "score", None)
        self.score: Callable[..., Any] | None = score if callable(score) else None
        prepare = getattr(self.module, "prepare", None)
        if callable(prepare):
            for test in self.tests:
                prepare(**test)
        self.libc = ctypes.CDLL(None, use_errno=True)

    # -- one candidate --

    def evaluate(self, body: str) -> dict[str, Any]:
        workdir = tempfile.mkdtemp(prefix="candidate-")
        if self.uid is not None:
            os.chown(workdir, self.uid, self.uid)
        read_fd, write_fd = os.pipe()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child never returns from here
            os.close(read_fd)
            self._child(body, write_fd, workdir)
        os.close(write_fd)
        try:
            data, timed_out, too_big = self._collect(pid, read_fd, started + float(self.limits["timeout_s"]))
        finally:
            os.close(read_fd)
        if timed_out or too_big:
            self._kill_group(pid)
        _, wait_status, usage = os.wait4(pid, 0)
        wall_s = time.monotonic() - started
        self._sweep(pid)
        shutil.rmtree(workdir, ignore_errors=True)
        reply: dict[str, Any] = {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall_s,
                                 "scores": None, "behaviour_hash": None, "error": None}
        if timed_out:
            reply.update(status="timeout", error=f"wall time over {self.limits['timeout_s']} s")
        elif too_big:
            reply.update(status="error", error=f"result over {self.max_result_bytes} bytes")
        else:
            reply.update(self._judge(data, wait_status, usage.ru_maxrss))
        return reply

    def _collect(self, pid: int, read_fd: int, deadline: float) -> tuple[bytes, bool, bool]:
        """Read the child's result until it exits; (data, timed_out, too_big)."""
        try:
            pid_fd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pid_fd = None  # older kernels: poll for the exit below
        chunks: list[bytes] = []
        size = 0
        pipe_open = True
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return b"".join(chunks), True, False
                watch = ([read_fd] if pipe_open else []) + ([pid_fd] if pid_fd is not None else [])
                wait = remaining if pid_fd is not None else min(remaining, 0.01)
                ready = select.select(watch, [], [], wait)[0]
                if read_fd in ready:
                    chunk = os.read(read_fd, 1 << 16)
                    pipe_open = bool(chunk)
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > self.max_result_bytes:
                        return b"", False, True
                    continue  # read everything there is before looking at the exit
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    # Exited: what it wrote is in the pipe. Descendants may hold the pipe open, so
                    # drain without blocking.
                    os.set_blocking(read_fd, False)
                    while size <= self.max_result_bytes:
                        try:
                            chunk = os.read(read_fd, 1 << 16)
                        except BlockingIOError:
                            break
                        if not chunk:
                            break
                        chunks.append(chunk)
                        size += len(chunk)
                    return b"".join(chunks), False, size > self.max_result_bytes
        finally:
            if pid_fd is not None:
                os.close(pid_fd)

    def _judge(self, data: bytes, wait_status: int, maxrss_kb: int) -> dict[str, Any]:
        memory_mb = float(self.limits["memory_mb"])
        try:
            result = json.loads(data)
            if not isinstance(result, dict):
                raise ValueError("not an object")
        except ValueError:
            result = None
        if result is None:
            if os.WIFSIGNALED(wait_status):
                sig = os.WTERMSIG(wait_status)
                if sig == signal.SIGXCPU:
                    return {"status": "timeout", "error": "CPU time limit"}
                if maxrss_kb / 1024 >= 0.8 * memory_mb:
                    return {"status": "memory", "error": f"killed by {signal.Signals(sig).name} near the memory limit"}
                return {"status": "error", "error": f"candidate killed by {signal.Signals(sig).name}"}
            code = os.waitstatus_to_exitcode(wait_status)
            if data:
                return {"status": "error", "error": f"candidate wrote an unreadable result (exit code {code})"}
            return {"status": "error", "error": f"candidate exited (code {code}) without a result"}
        status = result.get("status")
        if status == "memory":
            return {"status": "memory", "error": f"MemoryError (limit {memory_mb:g} MB)"}
        if status != "ok":
            return {"status": "error", "error": trim(str(result.get("error") or "candidate failed"))}
        return self._check(result)

    def _check(self, result: dict[str, Any]) -> dict[str, Any]:
        solutions = result.get("solutions")
        if not isinstance(solutions, list) or len(solutions) != len(self.tests):
            return {"status": "error", "error": "result has no solution per test"}
        scores: list[float] = []
        for test, solution in zip(self.tests, solutions, strict=True):
            try:
                if self.score is not None:
                    value = float(self.score(solution, **test))
                elif isinstance(solution, (int, float)) and not isinstance(solution, bool):
                    value = float(solution)  # a spec without a checker returns its score
                else:
                    raise ValueError(f"the run function returned {type(solution).__name__}, not a number")
                if not math.isfinite(value):
                    raise ValueError(f"score {value} is not finite")
            except Exception as exc:
                return {"status": "invalid", "error": trim(f"{test_key(test)}: {type(exc).__name__}: {exc}")}
            scores.append(value)
        behaviour = result.get("behaviour")
        return {"status": "ok", "scores": scores, "behaviour_hash": behaviour if isinstance(behaviour, str) else None}

    # -- the child --

    def _child(self, body: str, write_fd: int, workdir: str) -> None:
        me = os.getpid()
        try:
            self._lock_down(write_fd, workdir)
            result = self._run_candidate(body)
            data = json.dumps(result, default=_jsonable).encode()
        except MemoryError:
            data = b'{"status": "memory"}'
        except BaseException as exc:  # SystemExit and KeyboardInterrupt from a candidate are errors too
            try:
                data = json.dumps({"status": "error", "error": trim(_traceback(exc))}).encode()
            except BaseException:
                data = b'{"status": "error", "error": "candidate failed (no traceback)"}'
        if os.getpid() != me:  # a process the candidate forked: only the child itself reports
            os._exit(0)
        try:
            write_all(write_fd, data)
        finally:
            os._exit(0)

    def _lock_down(self, write_fd: int, workdir: str) -> None:
        os.setsid()  # its own process group: the server kills the whole group on timeout
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, 4096)
        os.chdir(workdir)
        if self.uid is not None:
            os.setgroups([])
            os.setgid(self.uid)
            os.setuid(self.uid)
        # Set after the uid change (which clears it): die with the server.
        self.libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        limits = self.limits
        with open("/proc/self/statm") as statm:
            current_bytes = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        cpu = math.ceil(float(limits["timeout_s"])) + 1
        max_procs = int(limits["max_procs"])
        if self.uid is None:  # the limit counts every process of our uid: leave room for those
            max_procs += _processes_of(os.getuid())
        for which, value in (
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_CPU, cpu),
            (resource.RLIMIT_AS, current_bytes + int(limits["memory_mb"]) * 1024 * 1024),
            (resource.RLIMIT_NPROC, max_procs),
            (resource.RLIMIT_NOFILE, int(limits["max_open_files"])),
            (resource.RLIMIT_FSIZE, int(limits["max_file_mb"]) * 1024 * 1024),
        ):
            resource.setrlimit(which, (value, value))

    def _run_candidate(self, body: str) -> dict[str, Any]:
        if not body.strip():
            raise ValueError("empty function body")
        source = f"{self.header}\n{body}\n"
        filename = "<candidate>"
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        namespace = self.module.__dict__
        exec(compile(source, filename, "exec"), namespace)
        recorder = _Recorder(self.behaviour_calls)
        # The run function finds the evolved function by name in the module at call time.
        namespace[self.function_name] = recorder.wrap(namespace[self.function_name])
        solutions = []
        for test in self.tests:
            solutions.append(self.run(**test))
            recorder.hash.update(b"|")
        return {"status": "ok", "solutions": solutions, "behaviour": recorder.hash.hexdigest()}

    # -- cleaning up --

    def _kill_group(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def _sweep(self, pid: int) -> None:
        """Kill whatever the candidate left running (a forked descendant, a fork bomb)."""
        self._kill_group(pid)
        for _ in range(200):
            if self.uid is not None:
                left = _processes_of(self.uid)
                if left:
                    _kill_uid(self.uid)
            elif self.pid_namespace and os.getppid() == 1:
                # Inside our own pid namespace everything but init (bubblewrap) and us is a candidate's.
                left = 0
                for other in _pids():
                    if other not in (1, os.getpid()):
                        left += 1
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(other, signal.SIGKILL)
            else:
                # The process group is all we can reach; its killed members come back to us (the
                # subreaper) to be reaped, so loop until the group is gone.
                self._kill_group(pid)
                left = 1
                try:
                    os.killpg(pid, 0)
                except (ProcessLookupError, PermissionError):
                    left = 0
            _reap()
            if not left:
                return
            time.sleep(0.005)


def _traceback(exc: BaseException) -> str:
    """The traceback without the server's own frames: the spec's and the candidate's lines."""
    summary = traceback.TracebackException.from_exception(exc)
    summary.stack = traceback.StackSummary.from_list([frame for frame in summary.stack if frame.filename != __file__])
    return "".join(summary.format())


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _processes_of(uid: int) -> int:
    count = 0
    for pid in _pids():
        try:
            if os.stat(f"/proc/{pid}").st_uid == uid:
                count += 1
        except OSError:
            pass
    return count


def _kill_uid(uid: int) -> None:
    """kill(-1) as ``uid``: the kernel signals every process of that uid at once (a fork bomb
    cannot outrun it), and never the caller."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _reap() -> None:
    """Collect exited children, including orphans handed to us as the subreaper."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main() -> None:
    # The protocol owns the original stdin/stdout; prints from a spec go to stderr.
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    # Single-threaded numerical libraries: the server forks, and a candidate's threads count
    # against its process limit. The environment is emptied once they are loaded.
    os.environ.clear()
    os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphaned descendants come back to us to reap
    # Without a uid of their own (unprivileged runs), candidates share ours: not dumpable means they
    # cannot ptrace us or open our /proc files (memory, pipes).
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    init = read_message(in_fd, None)
    if init is None:
        return
    try:
        server = Server(init)
    except BaseException:
        write_all(out_fd, encode({"ok": False, "error": trim(traceback.format_exc())}))
        return
    os.environ.clear()
    write_all(out_fd, encode({"ok": True, "uid": server.uid}))
    while True:
        request = read_message(in_fd, None)
        if request is None:
            return
        write_all(out_fd, encode(server.evaluate(str(request.get("body", "")))))


if __name__ == "__main__":
    main()
