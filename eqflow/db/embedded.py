"""The embedded default database: a private PostgreSQL cluster in a project-local folder.

``initdb`` + ``pg_ctl`` from the system's PostgreSQL, a free port on 127.0.0.1, password
(SCRAM) authentication, and, when run as root, an unprivileged ``eqflow`` system user that
owns the cluster (PostgreSQL refuses to run as root). The cluster is reused across runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eqflow.errors import EmbeddedDatabaseError

log = logging.getLogger(__name__)

DB_NAME = "eqflow"
DB_USER = "eqflow"
SERVER_OS_USER = os.environ.get("EQFLOW_PG_OS_USER", "eqflow")

_SERVER_SETTINGS = """
# --- eqflow embedded cluster ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 300
shared_buffers = 128MB
logging_collector = off
log_min_messages = warning
"""

# Appended to clusters made before it (see _ensure_settings): a queue's table churns, and
# PostgreSQL's default of one look per minute lets a busy run pile up dead rows between looks
# (measured: `eqflow bench churn`).
_VACUUM_SETTINGS = """
# --- eqflow embedded cluster: autovacuum ---
autovacuum_naptime = 10s
"""


def default_home() -> Path:
    """Where the embedded cluster lives: ``$EQFLOW_HOME``, else one per-user place (the user's
    data folder, e.g. ``~/.local/share/eqflow``), so every directory shares one database."""
    if env := os.environ.get("EQFLOW_HOME"):
        return Path(env).expanduser().resolve()
    import platformdirs

    return Path(platformdirs.user_data_dir("eqflow", appauthor=False)).resolve()


def find_pg_bin() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates: list[str] = []
    if env := os.environ.get("EQFLOW_PG_BIN"):
        candidates.append(env)
    if shutil.which("pg_config"):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
            candidates.append(out.stdout.strip())
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                      reverse=True)
    candidates.extend(versions)
    if found := shutil.which("initdb"):
        candidates.append(str(Path(found).resolve().parent))
    for folder in candidates:
        path = Path(folder)
        if all((path / exe).exists() for exe in ("initdb", "pg_ctl", "postgres")):
            return path
    raise EmbeddedDatabaseError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found. Install them "
        "(Debian: apt-get install postgresql) or set EQFLOW_PG_BIN to their folder; "
        "or point eqflow at an existing server with EQFLOW_DB_URL=postgresql://...")


PORT_RANGE = (20000, 32000)  # below Linux's ephemeral range (32768-60999): no clash with clients


def free_port() -> int:
    """A free port on 127.0.0.1 outside the ephemeral range, so an outgoing connection cannot
    take it between two runs."""
    import random

    ports = list(range(*PORT_RANGE))
    random.shuffle(ports)
    for port in ports[:2000]:
        if _port_free(port):
            return port
    raise EmbeddedDatabaseError(f"no free port in {PORT_RANGE[0]}-{PORT_RANGE[1]} on 127.0.0.1")


def _port_free(port: int) -> bool:
    """Whether nobody listens on the port (connections in TIME_WAIT do not count,
    as PostgreSQL binds with SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class ClusterState:
    data_dir: str
    port: int
    password: str
    os_user: str | None  # None: the cluster runs as the calling user


class EmbeddedPostgres:
    """A private PostgreSQL cluster kept under ``home``."""

    def __init__(self, home: Path | str | None = None) -> None:
        self.home = Path(home).resolve() if home is not None else default_home()
        self.state_file = self.home / "embedded.json"
        self.log_file = self.home / "postgres.log"

    # -- public API -------------------------------------------------------------------------
    def url(self) -> str:
        state = self._read_state()
        if state is None:
            raise EmbeddedDatabaseError(f"no embedded cluster at {self.home}; run `eqflow db start`")
        return f"postgresql://{DB_USER}:{state.password}@127.0.0.1:{state.port}/{DB_NAME}"

    def ensure_running(self) -> str:
        """Create the cluster if needed, start it if stopped; return its URL. ``last_action``
        says what was done ("created", "started" or None), for the caller to tell the user."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.last_action: str | None = None
        with self._lock():
            state = self._read_state()
            if state is None:
                state = self._initdb()
                self.last_action = "created"
            if not self._is_running(state):
                self._start(state)
                self.last_action = self.last_action or "started"
            elif self._ensure_settings(state):  # made by an older eqflow, running: reread
                self._pg_ctl(state, "reload")
            if self.last_action:
                log.info("embedded database " + self.last_action,
                         extra={"home": str(self.home), "port": state.port, "data_dir": state.data_dir})
            return self.url()

    def announcement(self) -> str | None:
        """A line for the user after ensure_running created or started the cluster."""
        action = getattr(self, "last_action", None)
        if action is None:
            return None
        state = self._read_state()
        port = state.port if state else "?"
        verb = "created and started" if action == "created" else "started"
        return (f"eqflow: {verb} the embedded PostgreSQL in {self.home} (127.0.0.1:{port}); it keeps "
                f"running for later runs - stop it with `eqflow db stop`")

    def is_running(self) -> bool:
        state = self._read_state()
        return state is not None and self._is_running(state)

    def stop(self) -> bool:
        """Stop the server (fast shutdown). Returns False if it was not running."""
        state = self._read_state()
        if state is None or not self._is_running(state):
            return False
        self._pg_ctl(state, "stop", "-m", "fast", "-w", "-t", "60")
        return True

    def reset(self) -> None:
        """Stop the server and delete the cluster and everything in it."""
        with self._lock():
            state = self._read_state()
            if state is not None and self._is_running(state):
                self._pg_ctl(state, "stop", "-m", "immediate", "-w", "-t", "60")
            if state is not None:
                shutil.rmtree(state.data_dir, ignore_errors=True)
                self._log_path(state).unlink(missing_ok=True)
            self.state_file.unlink(missing_ok=True)
            self.log_file.unlink(missing_ok=True)

    def status(self) -> dict[str, object]:
        state = self._read_state()
        if state is None:
            return {"home": str(self.home), "exists": False, "running": False}
        self.log_file = self._log_path(state)
        return {"home": str(self.home), "exists": True, "running": self._is_running(state),
                "data_dir": state.data_dir, "port": state.port, "os_user": state.os_user,
                "log": str(self.log_file)}

    # -- internals --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.home / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_state(self) -> ClusterState | None:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise EmbeddedDatabaseError(f"unreadable {self.state_file}: {exc}") from exc
        state = ClusterState(**raw)
        if not (Path(state.data_dir) / "PG_VERSION").exists():
            return None  # data folder gone: start over
        return state

    def _write_state(self, state: ClusterState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2))
        os.chmod(tmp, 0o600)
        tmp.replace(self.state_file)

    def _data_dir_for(self, os_user: str | None) -> Path:
        """The project-local data folder, unless the server user cannot reach it."""
        local = self.home / "pgdata"
        if os_user is None or _user_can_traverse(os_user, self.home):
            return local
        digest = hashlib.sha1(str(self.home).encode()).hexdigest()[:12]
        fallback = Path("/var/tmp/eqflow") / digest / "pgdata"
        log.info("data folder placed where the server user can reach it",
                    extra={"reason": f"user {os_user} cannot enter {self.home}", "data_dir": str(fallback)})
        return fallback

    def _initdb(self) -> ClusterState:
        bin_dir = find_pg_bin()
        os_user = _server_os_user()
        data_dir = self._data_dir_for(os_user)
        if data_dir.exists():
            shutil.rmtree(data_dir)
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)
        pwfile = data_dir.parent / ".pwfile"
        pwfile.write_text(password + "\n")
        if os_user is not None:
            _chown_tree(data_dir.parent, os_user)
            _chown_tree(self.home, os_user)
        log.info("initdb", extra={"data_dir": str(data_dir), "os_user": os_user})
        try:
            self._run([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", DB_USER,
                       "--pwfile", str(pwfile), "--auth=scram-sha-256", "-E", "UTF8",
                       "--no-locale", "--no-sync"], os_user)
        finally:
            pwfile.unlink(missing_ok=True)
        with open(data_dir / "postgresql.conf", "a") as conf:
            conf.write(_SERVER_SETTINGS)
        state = ClusterState(str(data_dir), free_port(), password, os_user)
        self._start(state)
        self._run_psql_create_db(bin_dir, state)
        self._write_state(state)
        return state

    def _run_psql_create_db(self, bin_dir: Path, state: ClusterState) -> None:
        import psycopg  # local import: the embedded helper is usable without a pool

        from eqflow.db.sqlfiles import query

        with psycopg.connect(host="127.0.0.1", port=state.port, user=DB_USER,
                             password=state.password, dbname="postgres", autocommit=True) as conn:
            conn.execute(query("create_eqflow_database"))

    def _log_path(self, state: ClusterState) -> Path:
        """Beside the data folder when that had to move out of ``home`` (the server user cannot
        write in ``home`` then), else in ``home``."""
        data = Path(state.data_dir)
        return self.home / "postgres.log" if data.parent == self.home else data.parent / "postgres.log"

    def _ensure_settings(self, state: ClusterState) -> bool:
        """Append the settings added since the cluster was made; True if any were."""
        conf = Path(state.data_dir) / "postgresql.conf"
        if _VACUUM_SETTINGS.strip().splitlines()[0] in conf.read_text():
            return False
        with open(conf, "a") as handle:
            handle.write(_VACUUM_SETTINGS)
        return True

    def _start(self, state: ClusterState) -> None:
        self._ensure_settings(state)
        self.log_file = self._log_path(state)
        if not _port_free(state.port):
            state.port = free_port()
        self.log_file.touch()
        if state.os_user is not None:
            _chown_tree(self.log_file, state.os_user)
        self._pg_ctl(state, "start", "-w", "-t", "60", "-l", str(self.log_file),
                     "-o", f"-p {state.port}")
        self._write_state(state)

    def _is_running(self, state: ClusterState) -> bool:
        bin_dir = find_pg_bin()
        proc = subprocess.run([str(bin_dir / "pg_ctl"), "status", "-D", state.data_dir],
                              capture_output=True, text=True, **_as_user(state.os_user))
        return proc.returncode == 0

    def _pg_ctl(self, state: ClusterState, *args: str) -> None:
        bin_dir = find_pg_bin()
        self._run([str(bin_dir / "pg_ctl"), args[0], "-D", state.data_dir, *args[1:]], state.os_user)

    def _run(self, cmd: list[str], os_user: str | None) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              cwd="/", **_as_user(os_user))
        if proc.returncode != 0:
            tail = ""
            if self.log_file.exists():
                tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
            raise EmbeddedDatabaseError(
                f"{' '.join(cmd[:2])} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}\n"
                f"server log tail:\n{tail}")


def _server_os_user() -> str | None:
    """The OS user that runs the server: ourselves, or an unprivileged one when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        proc = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                               SERVER_OS_USER], capture_output=True, text=True)
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            raise EmbeddedDatabaseError(
                f"running as root, and could not create the unprivileged user {SERVER_OS_USER!r} "
                f"that PostgreSQL needs: {proc.stderr.strip()}") from None
    return SERVER_OS_USER


def _as_user(os_user: str | None) -> dict[str, Any]:
    if os_user is None:
        return {}
    entry = pwd.getpwnam(os_user)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(HOME="/", USER=os_user, LOGNAME=os_user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "env": env}


def _chown_tree(path: Path, os_user: str) -> None:
    entry = pwd.getpwnam(os_user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(FileNotFoundError):
                    os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _user_can_traverse(os_user: str, path: Path) -> bool:
    """Whether ``os_user`` may enter every folder above ``path`` (checked by mode bits)."""
    entry = pwd.getpwnam(os_user)
    for parent in list(path.parents):
        try:
            st = parent.stat()
        except OSError:
            return False
        if st.st_uid == entry.pw_uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid == entry.pw_gid:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            return False
    return True
