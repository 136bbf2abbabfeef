"""The only door to the database: a psycopg 3 connection pool, named queries, retries.

Connection failures while *acquiring* a connection are always retried (nothing was sent).
Failures while a statement is in flight are retried only for idempotent statements; for a
non-idempotent write they raise :class:`AmbiguousCommit`. Every psycopg error leaves this
module as one of eqflow's own exceptions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from eqflow.db.sqlfiles import query
from eqflow.errors import AmbiguousCommit, DatabaseError, DatabaseUnavailable, InvalidInput

log = logging.getLogger(__name__)

Params = Mapping[str, Any]
FRESH_S = 1.0  # a connection used this recently is not checked before reuse


class Connector:
    """Runs named queries from ``sql/queries.sql`` on pooled autocommit connections."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8,
                 reconnect_timeout: float = 60.0, application_name: str = "eqflow") -> None:
        self.url = url
        self.reconnect_timeout = reconnect_timeout
        self._pool = ConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, name="eqflow",
            kwargs={"autocommit": True, "application_name": application_name},
            check=self._check, reconnect_timeout=reconnect_timeout,
        )
        self._opened = False
        self._last_used: dict[int, float] = {}

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

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; waits for the database to come back up to the deadline."""
        self.open()
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            try:
                conn = self._pool.getconn(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
                break
            except PoolTimeout:
                if time.monotonic() >= deadline:
                    raise DatabaseUnavailable(
                        f"no database connection within {self.reconnect_timeout:.0f}s ({_safe(self.url)})"
                    ) from None
        try:
            yield conn
        finally:
            self._last_used[id(conn)] = time.monotonic()
            self._pool.putconn(conn)

    def fetch_all(self, name: str, params: Params, *, idempotent: bool = True,
                  binary: bool = False) -> list[tuple[Any, ...]]:
        """binary: send parameters in binary format (cheaper for large arrays)."""
        return self._run(name, params, idempotent, lambda cur: cur.fetchall(), binary)

    def fetch_one(self, name: str, params: Params, *, idempotent: bool = True) -> tuple[Any, ...] | None:
        return self._run(name, params, idempotent, lambda cur: cur.fetchone())

    def execute(self, name: str, params: Params, *, idempotent: bool = True) -> int:
        return self._run(name, params, idempotent, lambda cur: cur.rowcount)

    def execute_script(self, sql: str) -> None:
        """Run a multi-statement script in one transaction (migrations)."""
        with self.connection() as conn, _translated(), conn.transaction():
            conn.execute(sql)  # trusted text from sql/, no parameters

    def _run(self, name: str, params: Params, idempotent: bool, read: Any, binary: bool = False) -> Any:
        sql = query(name)
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.05
        while True:
            with self.connection() as conn:
                try:
                    with _translated(), conn.cursor(binary=binary) as cur:
                        cur.execute(sql, params, prepare=True)
                        return read(cur)
                except _ConnectionLost as lost:
                    if not idempotent:
                        raise AmbiguousCommit(
                            f"connection lost during {name!r}; it may or may not have been applied"
                        ) from lost.__cause__
                    if time.monotonic() >= deadline:
                        raise DatabaseUnavailable(f"database unreachable during {name!r}") from lost.__cause__
                    log.warning("retrying after lost connection", extra={"query": name})
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


class _ConnectionLost(Exception):
    pass


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
        raise DatabaseError(_message(exc)) from exc


def _connection_broken(exc: psycopg.OperationalError) -> bool:
    if isinstance(exc, (pg_errors.AdminShutdown, pg_errors.CrashShutdown, pg_errors.CannotConnectNow)):
        return True
    return exc.sqlstate is None or exc.sqlstate.startswith("08") or exc.sqlstate.startswith("57P")


def _message(exc: psycopg.Error) -> str:
    diag = exc.diag
    primary = diag.message_primary or str(exc)
    return f"{primary} ({diag.sqlstate})" if diag.sqlstate else primary


def _safe(url: str) -> str:
    """The URL with its password hidden."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable url>"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())


