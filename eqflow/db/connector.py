"""The only door to the database: a psycopg 3 connection pool, named queries, retries.

Connection failures while *acquiring* a connection are always retried (nothing was sent).
Failures while a statement is in flight are retried only for idempotent statements; for a
non-idempotent write they raise :class:`AmbiguousCommit`. Every psycopg error leaves this
module as one of eqflow's own exceptions.

A database outage is ridden out for as long as it lasts (or up to ``reconnect_timeout``, when
one is given): every connector and the notification listener of a process share one
:class:`Outage` per database, which retries with capped exponential back-off (1, 2, 4, ...
30 s) and logs one line per back-off step, whichever threads are waiting.
"""

from __future__ import annotations

import enum
import logging
import os
import select
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from eqflow.db.sqlfiles import query
from eqflow.errors import AmbiguousCommit, DatabaseError, DatabaseUnavailable, InvalidInput, UnknownTask

log = logging.getLogger(__name__)

Params = Mapping[str, Any]
FRESH_S = 1.0  # a connection used this recently is not checked before reuse
BACKOFF_FIRST_S = 1.0  # outage back-off: 1, 2, 4, ... up to the cap
BACKOFF_CAP_S = 30.0
CONNECT_TIMEOUT_S = 10  # a connection attempt to an unreachable host gives up after this
GETCONN_S = 2.0  # a pooled connection not handed out this fast: is the database there at all?


class _QuietPoolLog(logging.Filter):
    """psycopg_pool logs a warning for every failed connection attempt (dozens a minute while
    the database is down). Outages are reported by :class:`Outage`, one line per back-off step."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


logging.getLogger("psycopg.pool").addFilter(_QuietPoolLog())


class Turn(enum.Enum):
    UP = "up"  # no outage known: use the database
    PROBE = "probe"  # an outage, and this caller makes the next attempt; report it with probed()
    GIVE_UP = "give_up"  # the caller's deadline came first, or it was told to stop waiting


class Outage:
    """One database's reachability as this process sees it, shared by every connector and the
    listener on it (see :func:`outage_for`). During an outage one caller at a time probes, at
    capped exponential back-off; the others wait for its answer. One log line per step."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._cond = threading.Condition()
        self.since: float | None = None  # monotonic time the outage was noticed; None: up
        self.recoveries = 0  # outages ended so far (a connector then checks its idle connections)
        self._delay = 0.0
        self._next_try = 0.0
        self._probing = False
        self._scheduled = False  # the probe under way is the back-off step's (not a newcomer's)
        self._answers = 0  # probes answered so far
        self._looked_at = -GETCONN_S  # the last probe of a caller that got no pooled connection

    @property
    def down(self) -> bool:
        return self.since is not None

    def turn(self, deadline: float | None, fresh: bool = False,
             cancel: threading.Event | None = None) -> Turn:
        """Wait until the caller may use the database: at once when no outage is known; during
        one, until the next back-off step is due and no other caller is probing.

        fresh: a caller that has not waited on this outage yet tries once at once (quietly: a
        failure neither logs nor moves the back-off), unless another is trying right now, whose
        answer it then takes. So a newcomer does not wait out a long step for a database that
        may be back already, and waiters stay on the back-off. cancel: give up once it is set."""
        with self._cond:
            answers = self._answers
            while self.since is not None:
                now = time.monotonic()
                if not self._probing and (now >= self._next_try or (fresh and self._answers == answers)):
                    self._probing = True
                    self._scheduled = now >= self._next_try
                    return Turn.PROBE
                if (deadline is not None and now >= deadline) or (cancel is not None and cancel.is_set()):
                    return Turn.GIVE_UP
                wait = None if self._probing else self._next_try - now
                if deadline is not None:
                    wait = deadline - now if wait is None else min(wait, deadline - now)
                if cancel is not None:  # looked at twice a second
                    wait = 0.5 if wait is None else min(wait, 0.5)
                self._cond.wait(wait)
            return Turn.UP

    def worth_a_look(self) -> bool:
        """Whether a caller that got no pooled connection should probe: not if another did so
        a moment ago (many threads waiting on a busy pool do not each open a connection)."""
        with self._cond:
            now = time.monotonic()
            if now - self._looked_at < GETCONN_S:
                return False
            self._looked_at = now
            return True

    def failed(self, error: str) -> None:
        """A connection attempt outside a probe failed: the outage starts (if not known yet)."""
        with self._cond:
            if self.since is None:
                self.since = time.monotonic()
                self._delay = 0.0
                self._step(error)

    def probed(self, error: str | None) -> None:
        """The answer of the caller that got Turn.PROBE: None if the database answered."""
        with self._cond:
            self._probing = False
            self._answers += 1
            if self.since is None:
                pass
            elif error is None:
                log.warning("database reachable again", extra={
                    "db": self.where, "down_for_s": round(time.monotonic() - self.since, 1)})
                self.since = None
                self.recoveries += 1
            elif self._scheduled:
                self._step(error)
            self._cond.notify_all()

    def _step(self, error: str) -> None:
        assert self.since is not None
        now = time.monotonic()
        self._delay = BACKOFF_FIRST_S if self._delay == 0 else min(self._delay * 2, BACKOFF_CAP_S)
        self._next_try = now + self._delay
        log.warning("database unreachable", extra={
            "db": self.where, "retry_in_s": round(self._delay), "down_for_s": round(now - self.since, 1),
            "error": error.strip().splitlines()[0] if error.strip() else "connection failed"})
        self._cond.notify_all()


_outages: dict[str, Outage] = {}
_outages_lock = threading.Lock()


def outage_for(url: str) -> Outage:
    """The process's shared outage state for the database at ``url``."""
    with _outages_lock:
        outage = _outages.get(url)
        if outage is None:
            outage = _outages[url] = Outage(_where(url))
        return outage


def _forget_after_fork() -> None:
    global _outages_lock
    _outages.clear()  # a lock or a probe of the parent's is no business of the child's
    _outages_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def connect_kwargs(url: str) -> dict[str, Any]:
    """connect_timeout unless the URL sets one: a host that drops packets must not hang a
    connection attempt for the kernel's minutes."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        given = {}
    return {} if "connect_timeout" in given else {"connect_timeout": CONNECT_TIMEOUT_S}


def probe(url: str) -> str | None:
    """Open and close one connection outside any pool: None if the database answers, else why not."""
    try:
        with psycopg.connect(url, autocommit=True, application_name="eqflow-probe", **connect_kwargs(url)):
            return None
    except psycopg.Error as exc:
        return str(exc) or type(exc).__name__


class Connector:
    """Runs named queries from ``sql/*.sql`` on pooled autocommit connections.

    reconnect_timeout: how long a call waits for an unreachable database before it raises
    DatabaseUnavailable; None (the default) waits for as long as the outage lasts.
    """

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8,
                 reconnect_timeout: float | None = None, application_name: str = "eqflow") -> None:
        self.url = url
        self.reconnect_timeout = reconnect_timeout
        self._outage = outage_for(url)
        self._recoveries_seen = self._outage.recoveries
        # The pool's own reconnection gives up at once: its back-off doubles without a cap, so
        # after a long outage it would come back minutes late. Retries are ours (Outage).
        self._pool = ConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, name="eqflow",
            kwargs={"autocommit": True, "application_name": application_name, **connect_kwargs(url)},
            check=self._check, reconnect_timeout=0.5,
        )
        self._opened = False
        self._last_used: dict[int, float] = {}
        self._stop_waiting = threading.Event()

    def stop_waiting(self) -> None:
        """From now on a call that finds the database unreachable raises DatabaseUnavailable
        (after one try) instead of waiting: for a pool told to stop during an outage."""
        self._stop_waiting.set()

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """Check a pooled connection with a round trip, unless it was used a moment ago: a
        hot path then pays nothing, and a connection the server dropped since fails its first
        statement, which the retry rules above handle."""
        if time.monotonic() - self._last_used.get(id(conn), 0.0) > FRESH_S or conn.closed:
            ConnectionPool.check_connection(conn)

    def open(self) -> None:
        if not self._opened:
            self._pool.open(wait=False)
            self._opened = True

    def close(self) -> None:
        if self._opened:
            self._pool.close()
            self._opened = False

    def _deadline(self) -> float | None:
        return None if self.reconnect_timeout is None else time.monotonic() + self.reconnect_timeout

    def _unavailable(self) -> DatabaseUnavailable:
        if self.reconnect_timeout is None or self._stop_waiting.is_set():
            return DatabaseUnavailable(f"database unreachable; stopped waiting ({_safe(self.url)})")
        return DatabaseUnavailable(
            f"no database connection within {self.reconnect_timeout:.0f}s ({_safe(self.url)})")

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; waits for an unreachable database to come back (up to
        reconnect_timeout, if one is set)."""
        self.open()
        deadline = self._deadline()
        outage = self._outage
        fresh = True
        while True:
            turn = outage.turn(deadline, fresh, self._stop_waiting)
            fresh = False
            if turn is Turn.GIVE_UP:
                raise self._unavailable()
            if turn is Turn.PROBE:
                error: str | None = "probe interrupted"
                try:
                    error = probe(self.url)
                finally:
                    outage.probed(error)
                if error is not None:
                    continue
            if self._recoveries_seen != outage.recoveries:
                self._recoveries_seen = outage.recoveries
                self._pool.check()  # drop the idle connections the outage broke
            wait = GETCONN_S if deadline is None else max(0.1, min(GETCONN_S, deadline - time.monotonic()))
            try:
                conn = self._pool.getconn(timeout=wait)
                break
            except PoolTimeout:
                # Down, or every pooled connection busy? One look per process and GETCONN_S.
                error = probe(self.url) if outage.worth_a_look() else None
                if error is not None:
                    outage.failed(error)
                elif deadline is not None and time.monotonic() >= deadline:
                    raise self._unavailable() from None
                # else the database is there and every pooled connection is busy: wait on
        try:
            yield conn
        finally:
            self._last_used[id(conn)] = time.monotonic()
            self._pool.putconn(conn)

    def fetch_all(self, name: str, params: Params, *, idempotent: bool = True,
                  binary: bool = False, then: tuple[str, Params] | None = None) -> list[tuple[Any, ...]]:
        """binary: send parameters in binary format (cheaper for large arrays).

        then: a statement to run right after this one has committed, in a transaction of its
        own, sent in the same round trip (a pipeline): for an announcement of what this one
        did. Its failure is logged, never raised: this statement's outcome stands.
        """
        return self._run(name, params, idempotent, lambda cur: cur.fetchall(), binary, then)

    def fetch_one(self, name: str, params: Params, *, idempotent: bool = True) -> tuple[Any, ...] | None:
        return self._run(name, params, idempotent, lambda cur: cur.fetchone())

    def execute(self, name: str, params: Params, *, idempotent: bool = True) -> int:
        return self._run(name, params, idempotent, lambda cur: cur.rowcount)

    def execute_script(self, sql: str) -> None:
        """Run a multi-statement script in one transaction (migrations)."""
        with self.connection() as conn, _translated(), conn.transaction():
            conn.execute(sql)  # trusted text from sql/, no parameters

    def _run(self, name: str, params: Params, idempotent: bool, read: Any, binary: bool = False,
             then: tuple[str, Params] | None = None) -> Any:
        sql = query(name)
        deadline = self._deadline()
        delay = 0.05
        while True:
            with self.connection() as conn:
                sent = False
                try:
                    if not idempotent and _has_input(conn):
                        # An idle connection with something to read: most likely the server
                        # closed it (a restart). A write that cannot be retried is not sent down
                        # it before a round trip shows it alive; a dead one fails here, unsent.
                        with _translated():
                            ConnectionPool.check_connection(conn)
                    with _translated(), conn.cursor(binary=binary) as cur:
                        sent = True
                        if then is not None:
                            return _pipelined(conn, cur, sql, params, read, then)
                        cur.execute(sql, params, prepare=True)
                        return read(cur)
                except _ConnectionLost as lost:
                    if not idempotent and sent:
                        raise AmbiguousCommit(
                            f"connection lost during {name!r}; it may or may not have been applied"
                        ) from lost.__cause__
                    if deadline is not None and time.monotonic() >= deadline:
                        raise DatabaseUnavailable(f"database unreachable during {name!r}") from lost.__cause__
                    # one line per outage step comes from Outage, not one per statement retried
                    log.debug("retrying after lost connection", extra={"query": name})
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


class _ConnectionLost(Exception):
    pass


def _pipelined(conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any], sql: str, params: Params, read: Any,
               then: tuple[str, Params]) -> Any:
    """Run ``sql``, then ``then`` in one round trip. The Sync between them ends the first
    statement's implicit transaction, so the second runs after its commit; the caller has the
    first's rows as soon as they come, and the second's answer is collected before the
    connection goes back to the pool."""
    outcome: list[Any] = []
    try:
        with conn.pipeline() as pipe:
            cur.execute(sql, params, prepare=True)
            pipe.sync()
            with conn.cursor() as after:
                after.execute(query(then[0]), then[1], prepare=True)
                outcome.append(read(cur))
    except psycopg.Error as exc:
        if not outcome:
            raise
        # The statement's rows are in hand: its outcome stands (a broken connection is dropped
        # by the pool when it comes back).
        log.warning("follow-up statement failed", extra={"query": then[0], "error": str(exc)})
    return outcome[0]


def _has_input(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection's socket has input waiting (no round trip)."""
    if conn.closed:
        return True
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(0))


# Raised by eqflow_require_known (migration 0015) with the unknown ids in its DETAIL; the
# statement, and so the whole call, has rolled back.
UNKNOWN_TASKS = "EQ404"


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except (pg_errors.DataException, pg_errors.IntegrityError) as exc:
        raise InvalidInput(_message(exc)) from exc
    except pg_errors.AdminShutdown as exc:
        raise _ConnectionLost() from exc
    except psycopg.OperationalError as exc:
        if _connection_broken(exc):
            raise _ConnectionLost() from exc
        raise DatabaseError(_message(exc)) from exc
    except psycopg.Error as exc:
        if exc.sqlstate == UNKNOWN_TASKS:
            raise UnknownTask([int(t) for t in (exc.diag.message_detail or "").split(",") if t]) from exc
        raise DatabaseError(_message(exc)) from exc


def _connection_broken(exc: psycopg.OperationalError) -> bool:
    if isinstance(exc, (pg_errors.AdminShutdown, pg_errors.CrashShutdown, pg_errors.CannotConnectNow)):
        return True
    return exc.sqlstate is None or exc.sqlstate.startswith("08") or exc.sqlstate.startswith("57P")


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag
    primary = diag.message_primary or str(exc)
    return f"{primary} ({diag.sqlstate})" if diag.sqlstate else primary


def _where(url: str) -> str:
    """host:port/dbname of a database URL, never its password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable url>"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


def _safe(url: str) -> str:
    """The URL with its password hidden."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable url>"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())


