"""Wake-ups without polling: one LISTEN connection per process feeds in-process inboxes.

Channels (see sql/migrations/0001_init.sql):
  eqflow_queued  payload "<task_type>"             new or requeued work
  eqflow_done    payload "<exp_id>|<id>,<id>,..."  tasks that finished (split at the LAST "|":
                                                    an exp_id may hold "|", task ids never do)
  eqflow_pool    payload "<pool_id>"               a pool was told to stop

A process listens only on the channels it has inboxes for: a worker waiting for work is not
woken for every task that finishes elsewhere (its thread would parse and drop each one), and a
channel nobody has waited on for UNLISTEN_AFTER_S is dropped. PostgreSQL (up to 17 at least)
signals every backend that listens on any channel of the database for each notifying commit, so
a busy worker that kept listening cost the server a signal and a queue read per finished task.
A subscribe to a channel not listened on wakes the listener thread, which LISTENs at once.

After a (re)connect every inbox is told to resync, since notifications sent while the
listener was away are lost; waiters then do one full check.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable

import psycopg

from eqflow.db.connector import Turn, connect_kwargs, outage_for

log = logging.getLogger(__name__)

CHANNELS = ("eqflow_queued", "eqflow_done", "eqflow_pool")
UNLISTEN_AFTER_S = 1.0  # a channel without inboxes this long is dropped (a wait soon after keeps it)
TURN_S = 0.25  # the listener thread looks at its channels and stop flag at least this often


class Inbox:
    """Collects the notifications for a set of keys until its owner takes them."""

    def __init__(self, listener: Listener, keys: frozenset[tuple[str, str]]) -> None:
        self._listener = listener
        self.keys = keys
        self._cond = threading.Condition()
        self._payloads: list[str] = []
        self._signaled = False
        self._resync = False
        # Called (from the listener thread) after each delivery: lets an asyncio waiter be
        # woken with loop.call_soon_threadsafe instead of blocking a thread in wait().
        self.on_signal: Callable[[], None] | None = None

    def _deliver(self, payload: str | None) -> None:
        with self._cond:
            if payload is None:
                self._resync = True
            else:
                self._payloads.append(payload)
            self._signaled = True
            self._cond.notify_all()
        callback = self.on_signal
        if callback is not None:
            try:
                callback()
            except Exception:  # a waiter's loop that is gone must not stop the listener
                log.debug("inbox wake-up callback failed", exc_info=True)

    def clear(self) -> None:
        with self._cond:
            self._payloads.clear()
            self._signaled = False
            self._resync = False

    def wait(self, timeout: float | None) -> tuple[list[str], bool, bool]:
        """Wait for a notification. Returns (payloads, resync, woken); woken is False on timeout."""
        with self._cond:
            if not self._signaled:
                self._cond.wait(timeout)
            payloads, resync, woken = self._payloads, self._resync, self._signaled
            self._payloads, self._resync, self._signaled = [], False, False
        return payloads, resync, woken

    def close(self) -> None:
        self._listener.unsubscribe(self)

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Listener:
    """A background thread holding a LISTEN connection and routing notifications."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._inboxes: dict[tuple[str, str], set[Inbox]] = defaultdict(set)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # channel -> set once LISTEN on it has taken effect on the current connection
        self._ready: dict[str, threading.Event] = {}
        self._subscribers: dict[str, int] = defaultdict(int)  # channel -> inboxes open on it
        self._unused_since: dict[str, float] = {}  # channel -> when its last inbox closed
        # wakes the thread from its wait (a subscribe to a channel not listened on, close());
        # made with the thread, closed when it ends
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None

    def subscribe(self, channel: str, keys: list[str] | set[str] | frozenset[str]) -> Inbox:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")
        inbox = Inbox(self, frozenset((channel, str(k)) for k in keys))
        while True:
            with self._lock:
                stopping = self._thread if self._thread is not None and self._stop.is_set() else None
                if stopping is None or not stopping.is_alive():
                    for key in inbox.keys:
                        self._inboxes[key].add(inbox)
                    self._subscribers[channel] += 1
                    self._unused_since.pop(channel, None)
                    ready = self._ready.setdefault(channel, threading.Event())
                    self._ensure_thread()
                    break
            stopping.join()  # outside the lock: the thread takes it to route notifications
        # A waiter must not miss what is sent between its first check and the LISTEN taking effect.
        if not ready.is_set():
            self._wake()
            ready.wait(timeout=10.0)
        return inbox

    def unsubscribe(self, inbox: Inbox) -> None:
        with self._lock:
            channels = set()
            for key in inbox.keys:
                members = self._inboxes.get(key)
                if members is not None and inbox in members:
                    members.discard(inbox)
                    channels.add(key[0])
                    if not members:
                        del self._inboxes[key]
            for channel in channels:
                self._subscribers[channel] -= 1
                if self._subscribers[channel] <= 0:
                    del self._subscribers[channel]
                    self._unused_since[channel] = time.monotonic()

    def _wake(self) -> None:
        wake = self._wake_w
        if wake is not None:
            with contextlib.suppress(OSError):  # full (the thread has wake-ups pending anyway) or closed
                wake.send(b"x")

    def close(self) -> None:
        """Stop the thread and drop its connection (a later subscribe starts them again)."""
        self._stop.set()
        self._wake()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            for ready in self._ready.values():
                ready.clear()
            if self._wake_r is None:
                self._wake_r, self._wake_w = socket.socketpair()
                self._wake_r.setblocking(False)
                self._wake_w.setblocking(False)
            self._thread = threading.Thread(target=self._run, name="eqflow-listener", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        wake_r = self._wake_r
        assert wake_r is not None  # made by _ensure_thread
        try:
            self._serve(wake_r)
        finally:
            with self._lock:  # closed for good: a later subscribe makes a new pair with its thread
                for sock in (self._wake_r, self._wake_w):
                    if sock is not None:
                        sock.close()
                self._wake_r = self._wake_w = None

    def _serve(self, wake_r: socket.socket) -> None:
        # Reconnects for as long as it takes, at the back-off of the process's shared Outage
        # for this database (one log line per step, shared with the connectors).
        outage = outage_for(self.url)
        while not self._stop.is_set():
            turn = outage.turn(time.monotonic() + 0.5)  # wakes now and then to notice close()
            if turn is Turn.GIVE_UP:
                continue
            probing = turn is Turn.PROBE
            connected = False
            try:
                with psycopg.connect(self.url, autocommit=True, application_name="eqflow-listener",
                                     **connect_kwargs(self.url)) as conn:
                    if probing:
                        probing = False
                        outage.probed(None)
                    listening: set[str] = set()
                    self._tune_channels(conn, listening)
                    connected = True
                    self._broadcast_resync()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0):  # what has arrived, without waiting
                            self._route(note.channel, note.payload)
                        self._tune_channels(conn, listening)
                        select.select([conn.fileno(), wake_r.fileno()], [], [], TURN_S)
                        _drain(wake_r)
            except psycopg.Error as exc:
                with self._lock:  # subscribers wait for the next connection's LISTEN
                    for ready in self._ready.values():
                        ready.clear()
                if probing:
                    probing = False
                    outage.probed(str(exc))
                elif self._stop.is_set():
                    break
                elif connected:  # retried at once; if that fails, the outage is logged
                    log.info("listener connection lost; reconnecting",
                             extra={"error": (str(exc).strip().splitlines() or [""])[0]})
                else:
                    outage.failed(str(exc))
                self._broadcast_resync()
            finally:
                if probing:
                    outage.probed("listener stopped")

    def _tune_channels(self, conn: psycopg.Connection[object], listening: set[str]) -> None:
        """LISTEN on the channels that got their first inbox since the last turn; UNLISTEN those
        without inboxes for UNLISTEN_AFTER_S."""
        now = time.monotonic()
        with self._lock:
            wanted = [(channel, self._ready[channel]) for channel in self._subscribers if channel not in listening]
            unused = [channel for channel in listening if channel not in self._subscribers
                      and now - self._unused_since.get(channel, now) >= UNLISTEN_AFTER_S]
            for channel in unused:  # a subscribe from now on waits for the next LISTEN
                listening.discard(channel)
                self._ready[channel].clear()
        for channel in unused:
            conn.execute(f"UNLISTEN {channel}")  # one of the constant names above
        for channel, ready in wanted:
            conn.execute(f"LISTEN {channel}")  # one of the constant names above
            listening.add(channel)
            ready.set()

    def _route(self, channel: str, payload: str) -> None:
        key = done_key(payload) if channel == "eqflow_done" else payload
        with self._lock:
            targets = list(self._inboxes.get((channel, key), ()))
        for inbox in targets:
            inbox._deliver(payload)

    def _broadcast_resync(self) -> None:
        with self._lock:
            targets = {inbox for members in self._inboxes.values() for inbox in members}
        for inbox in targets:
            inbox._deliver(None)


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # BlockingIOError: nothing (more) to read
        while sock.recv(4096):
            pass


_listeners: dict[str, Listener] = {}
_registry_lock = threading.Lock()


_users: dict[str, int] = {}


def listener_for(url: str) -> Listener:
    """The process's shared listener for ``url``; pair with release_listener()."""
    with _registry_lock:
        listener = _listeners.get(url)
        if listener is None:
            listener = _listeners[url] = Listener(url)
        _users[url] = _users.get(url, 0) + 1
        return listener


def release_listener(url: str) -> None:
    """The last user of a listener gone, its thread and connection go too."""
    with _registry_lock:
        _users[url] = _users.get(url, 1) - 1
        if _users[url] <= 0:
            _users.pop(url, None)
            listener = _listeners.pop(url, None)
            if listener is not None:
                listener.close()


def _forget_after_fork() -> None:
    global _registry_lock
    _listeners.clear()  # threads do not survive fork; children start their own
    _users.clear()
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


# The trigger (sql/migrations/0001_init.sql) sends exp_id unescaped, and any exp_id is allowed
# (they come from EMEWS scripts), so a payload is split at its last "|": the ids after it are
# digits and commas only. No new migration is needed, and older payloads parse the same way.
def done_key(payload: str) -> str:
    """The exp_id an eqflow_done payload is about."""
    return payload.rpartition("|")[0]


def done_ids(payloads: list[str]) -> set[int]:
    """The task ids named by eqflow_done payloads."""
    ids: set[int] = set()
    for payload in payloads:
        _, _, tail = payload.rpartition("|")
        ids.update(int(t) for t in tail.split(",") if t)
    return ids
