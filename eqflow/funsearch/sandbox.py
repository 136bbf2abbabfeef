"""Evaluating untrusted candidate functions: a sandbox server process per evaluator.

Candidate code never runs in the evaluator's process. A ``Sandbox`` starts ``_sandbox_server.py``
with an empty environment, inside bubblewrap when it works here (no network, read-only filesystem,
private /tmp, /run and home directories, pid namespace), else inside ``unshare --net --pid`` (root),
else with rlimits only. The server imports the spec once and calls its ``prepare``; for each
candidate it forks a child that drops to a per-sandbox uid (60000 + slot, when the server is root),
applies rlimits (CPU, address space, processes, open files, file size), works in a fresh temporary
directory, and runs the spec's run function with the candidate defined. The server enforces the wall
timeout, kills everything of the sandbox uid the candidate left behind, and scores each solution
with the spec's trusted ``score``. If the server dies, the evaluation in flight is an error and the
next one starts a new server.

Statuses: ``ok`` (scores per test key), ``error`` (syntax error, exception, crash; the traceback
in ``error``), ``timeout`` (wall or CPU limit), ``memory`` (address-space limit), ``invalid`` (a
solution failed the spec's checker).

Servers are started from one long-lived thread of the evaluator's process: ``--die-with-parent``
and ``PR_SET_PDEATHSIG`` fire when the *thread* that started a process exits, so a Sandbox made in
a short-lived worker thread would otherwise lose its server with that thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import functools
import logging
import os
import pwd
import queue
import shutil
import site
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from eqflow.funsearch._sandbox_server import encode, read_message, trim, write_all
from eqflow.funsearch.spec import Spec, SpecError, test_key

logger = logging.getLogger(__name__)

SERVER = Path(__file__).resolve().with_name("_sandbox_server.py")
UID_BASE = 60000
UID_SLOTS = 2000
STARTUP_TIMEOUT_S = 120.0  # importing the spec and prepare() for every test
REPLY_GRACE_S = 30.0  # on top of the candidate's timeout: killing, sweeping, checking
STATUSES = ("ok", "error", "timeout", "memory", "invalid")


@dataclass(frozen=True)
class Limits:
    """Per-candidate limits. ``memory_mb`` is address space on top of what the server already
    maps; ``max_procs`` counts every process of the sandbox uid."""

    timeout_s: float = 30.0
    memory_mb: int = 1024
    max_procs: int = 16
    max_open_files: int = 64
    max_file_mb: int = 16


@dataclass
class Evaluation:
    status: str  # ok | error | timeout | memory | invalid (a solution failed the checker)
    scores: dict[str, float] = field(default_factory=dict)  # test key -> score, only when ok
    behaviour_hash: str | None = None
    cpu_s: float = 0.0
    wall_s: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evaluation:
        status = str(data["status"])
        if status not in STATUSES:
            raise ValueError(f"unknown evaluation status {status!r}")
        return cls(status=status, scores={str(k): float(v) for k, v in (data.get("scores") or {}).items()},
                   behaviour_hash=data.get("behaviour_hash"), cpu_s=float(data.get("cpu_s") or 0.0),
                   wall_s=float(data.get("wall_s") or 0.0), error=data.get("error"))


@dataclass(frozen=True)
class Isolation:
    """What wraps the sandbox server here."""

    kind: str  # bubblewrap | unshare | rlimits
    prefix: tuple[str, ...]  # the wrapper's command line, before the python command
    no_network: bool
    readonly_filesystem: bool
    pid_namespace: bool
    uid_drop: bool  # the server runs as root and can drop each candidate to the sandbox uid

    def describe(self, uid: int | None = None) -> str:
        parts = []
        if self.kind == "bubblewrap":
            parts.append("bubblewrap: no network, read-only filesystem, private /tmp, /run and home, pid namespace")
        elif self.kind == "unshare":
            parts.append("unshare: no network" + (", pid namespace" if self.pid_namespace else ""))
        else:
            parts.append("no namespaces")
        parts.append("empty environment; rlimits (cpu, memory, processes, open files, file size)")
        if uid is not None:
            parts.append(f"uid {uid}")
        elif self.uid_drop:
            parts.append("unprivileged uid per sandbox")
        else:
            parts.append("same uid as the evaluator")
        return "; ".join(parts)


def _hidden_directories() -> list[Path]:
    """Host directories replaced by empty private ones inside bubblewrap: /tmp (candidates' scratch
    space), /run (service sockets: a read-only bind does not stop connecting to a unix socket) and
    the home directories (credentials a candidate could copy into its error text)."""
    homes = [Path("/root")]
    with contextlib.suppress(KeyError):
        homes.append(Path(pwd.getpwuid(os.geteuid()).pw_dir))
    hidden = [Path("/tmp"), Path("/run")]
    for home in homes:
        home = home.resolve()
        if home.is_dir() and home != Path("/") and home not in hidden:
            hidden.append(home)
    return [path for path in hidden if path.is_dir()]


def _needed_paths() -> set[Path]:
    """What the server must see: the interpreter, the virtual environment, site-packages, eqflow."""
    paths = {SERVER.parent, Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent}
    paths.update(Path(path) for path in site.getsitepackages())
    return {path.resolve() for path in paths if path.exists()}


def _bwrap_prefix(tmp_bytes: int) -> list[str]:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return []
    prefix = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    hidden = _hidden_directories()
    for directory in hidden:
        # /tmp first: Sandbox._command sizes the first tmpfs from the limits.
        size = tmp_bytes if directory == Path("/tmp") else 1 << 20
        prefix += ["--size", str(size), "--tmpfs", str(directory)]
    # Bind back, read-only, what the server needs from inside a hidden directory (a pyenv in /root).
    needed = _needed_paths()
    for path in sorted(needed):
        if any(other in path.parents for other in needed):
            continue  # bound with its parent
        if any(path == directory or directory in path.parents for directory in hidden):
            prefix += ["--ro-bind", str(path), str(path)]
    return prefix + ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                     "--die-with-parent", "--new-session", "--clearenv", "--chdir", "/tmp", "--"]


def _works(prefix: list[str]) -> bool:
    try:
        done = subprocess.run([*prefix, sys.executable, "-I", "-c", "pass"], env={}, capture_output=True,
                              timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@functools.lru_cache(maxsize=1)
def isolations() -> tuple[Isolation, ...]:
    """The isolations that work here, strongest first (probed once per process)."""
    root = os.geteuid() == 0
    found = []
    bwrap = _bwrap_prefix(64 << 20)
    if bwrap and _works(bwrap):
        # Unprivileged bubblewrap runs in a user namespace where only our own uid exists.
        found.append(Isolation("bubblewrap", tuple(bwrap), True, True, True, uid_drop=root))
    unshare = shutil.which("unshare")
    if root and unshare:
        for prefix, pid_ns in (([unshare, "--net", "--pid", "--fork", "--kill-child", "--mount-proc"], True),
                               ([unshare, "--net"], False)):
            if _works(prefix):
                found.append(Isolation("unshare", tuple(prefix), True, False, pid_ns, uid_drop=True))
                break
    found.append(Isolation("rlimits", (), False, False, False, uid_drop=root))
    return tuple(found)


def isolation_available() -> str:
    """What a Sandbox would use here, in words (for the evaluator's start-up log)."""
    return isolations()[0].describe()


class _Spawner:
    """Starts processes from one daemon thread that lives as long as the process (see the module
    docstring for why)."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[tuple[list[str], dict[str, Any], concurrent.futures.Future[Any]]] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="eqflow-sandbox-spawner", daemon=True)
                self._thread.start()
        done: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
        self._requests.put((command, kwargs, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            command, kwargs, done = self._requests.get()
            try:
                done.set_result(subprocess.Popen(command, **kwargs))
            except BaseException as exc:
                done.set_exception(exc)


_spawner = _Spawner()


class _UidSlot:
    """An exclusive sandbox uid, held with a lock file, so that killing everything of the uid
    only ever hits this sandbox's processes."""

    def __init__(self) -> None:
        lock_dir = Path(tempfile.gettempdir())
        for slot in range(1, UID_SLOTS):
            uid = UID_BASE + slot
            try:
                pwd.getpwuid(uid)
                continue  # a real account: not ours to use
            except KeyError:
                pass
            handle = open(lock_dir / f"eqflow-sandbox-uid-{uid}.lock", "a")  # noqa: SIM115 (held open)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            self.uid, self._handle = uid, handle
            return
        raise RuntimeError("no free sandbox uid slot")

    def release(self) -> None:
        self._handle.close()


class Sandbox:
    """Evaluates candidate bodies of ``spec``'s evolved function on ``tests``, isolated.

    ``evaluate`` never raises for anything a candidate does; a broken spec (import or ``prepare``
    failing) raises SpecError from the constructor. ``isolation`` picks a weaker kind than the
    strongest available (``bubblewrap``, ``unshare``, ``rlimits``), for tests.
    """

    def __init__(self, spec: Spec, tests: list[dict[str, Any]], limits: Limits | None = None,
                 isolation: str | None = None) -> None:
        self.spec = spec
        self.tests = [dict(test) for test in tests]
        if not self.tests:
            raise ValueError("a sandbox needs at least one test")
        self.keys = [test_key(test) for test in self.tests]
        self.limits = limits or Limits()
        available = {choice.kind: choice for choice in isolations()}
        if isolation is not None and isolation not in available:
            raise ValueError(f"isolation {isolation!r} is not available here (have: {', '.join(available)})")
        self.isolation_info = available[isolation] if isolation else isolations()[0]
        self._slot = _UidSlot() if self.isolation_info.uid_drop else None
        self.uid = self._slot.uid if self._slot else None
        self.isolation = self.isolation_info.describe(self.uid)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._closed = False
        self._lock = threading.Lock()  # one request at a time on the server's pipe
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # -- the server process --

    @property
    def server_pid(self) -> int | None:
        """The pid of the started process (bubblewrap or unshare when they wrap the server)."""
        return self._proc.pid if self._proc else None

    def _command(self) -> list[str]:
        prefix = list(self.isolation_info.prefix)
        if self.isolation_info.kind == "bubblewrap":
            # /tmp inside is a tmpfs of this size: candidates' files live there.
            prefix[prefix.index("--size") + 1] = str(max(64, self.limits.max_file_mb * 4) << 20)
        return [*prefix, sys.executable, "-I", str(SERVER)]

    def _start(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (kept for the server's lifetime)
        started = time.monotonic()
        self._proc = _spawner.popen(self._command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=self._stderr, env={}, bufsize=0, close_fds=True)
        init = {
            "spec_text": self.spec.text, "spec_name": self.spec.name, "function_name": self.spec.function_name,
            "header": self.spec.header, "run_name": self.spec.run_name, "tests": self.tests,
            "limits": asdict(self.limits), "uid": self.uid, "pid_namespace": self.isolation_info.pid_namespace,
        }
        try:
            self._send(init)
            reply = self._receive(STARTUP_TIMEOUT_S)
        except (OSError, EOFError, TimeoutError, ValueError) as exc:
            detail = self._stderr_tail()
            self._stop_server()
            raise RuntimeError(f"sandbox server did not start: {exc}\n{detail}".rstrip()) from exc
        if not reply.get("ok"):
            self._stop_server()
            raise SpecError(f"spec {self.spec.name} failed in the sandbox server:\n{reply.get('error')}")
        logger.info("sandbox started", extra={"spec": self.spec.name, "isolation": self.isolation,
                                              "seconds": round(time.monotonic() - started, 3)})

    def _send(self, message: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        write_all(self._proc.stdin.fileno(), encode(message))

    def _receive(self, timeout_s: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        reply = read_message(self._proc.stdout.fileno(), time.monotonic() + timeout_s)
        if reply is None:
            raise EOFError("sandbox server exited")
        return reply

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            return trim(self._stderr.read().decode(errors="replace"), 2000)
        except (OSError, ValueError):
            return ""

    def _stop_server(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                logger.warning("sandbox server did not exit after SIGKILL", extra={"pid": proc.pid})
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        if self.uid is not None and not self.isolation_info.pid_namespace:
            _kill_uid(self.uid)  # no pid namespace took the candidate's descendants down with it
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # -- evaluating --

    def evaluate(self, body: str) -> Evaluation:
        """Run one candidate body (4-space indented) on every test; never raises for the candidate."""
        with self._lock:
            return self._evaluate(body)

    def _evaluate(self, body: str) -> Evaluation:
        if self._closed:
            raise RuntimeError("sandbox is closed")
        started = time.monotonic()
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                logger.warning("sandbox server died; restarting", extra={"spec": self.spec.name,
                                                                        "stderr": self._stderr_tail()})
                self._stop_server()
            try:
                self._start()
            except (RuntimeError, SpecError) as exc:
                return Evaluation("error", error=trim(f"sandbox server could not restart: {exc}"),
                                  wall_s=time.monotonic() - started)
        try:
            self._send({"body": body})
            reply = self._receive(self.limits.timeout_s + REPLY_GRACE_S)
            evaluation = self._evaluation(reply)
        except (OSError, EOFError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            detail = self._stderr_tail()
            self._stop_server()  # the next evaluation starts a fresh one
            return Evaluation("error", error=trim(f"sandbox server failed: {type(exc).__name__}: {exc}\n{detail}"),
                              wall_s=time.monotonic() - started)
        return evaluation

    def _evaluation(self, reply: dict[str, Any]) -> Evaluation:
        status = str(reply["status"])
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        scores = reply.get("scores") if status == "ok" else None
        return Evaluation(
            status=status,
            scores=dict(zip(self.keys, map(float, scores), strict=True)) if scores is not None else {},
            behaviour_hash=reply.get("behaviour_hash") if status == "ok" else None,
            cpu_s=float(reply.get("cpu_s") or 0.0), wall_s=float(reply.get("wall_s") or 0.0),
            error=reply.get("error"),
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None and proc.stdin is not None:
            proc.stdin.close()  # EOF: the server exits by itself
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._stop_server()
        if self._slot is not None:
            self._slot.release()
            self._slot = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:  # noqa: SIM105 -- at interpreter exit contextlib itself may be gone
                self.close()
            except Exception:  # the server ends by itself at EOF on its stdin
                pass


def _kill_uid(uid: int) -> None:
    """Kill every process of ``uid``: kill(-1) run as that uid signals all of them at once and never
    the caller. (/bin/kill, because the uid may not be able to read our interpreter.)"""
    kill = shutil.which("kill") or "/bin/kill"
    try:
        subprocess.run([kill, "-KILL", "-1"], user=uid, group=uid, extra_groups=[], env={},
                       capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("could not kill the processes of the sandbox uid", extra={"uid": uid, "error": str(exc)})
