"""An SSH local port forward (like ``ssh -L``) with paramiko, opened and re-opened by the client.

    tunnel = SSHTunnel("login.cluster.org", remote_port=8765, user="me", key_filename="~/.ssh/id_ed25519")
    queue = ServiceTaskQueue(tunnel=tunnel, token=...)

``host`` may be an alias from an ssh_config file (HostName, User, Port, IdentityFile are read).
Host keys are checked against ``known_hosts`` (default ~/.ssh/known_hosts); an unknown host is
refused unless ``accept_unknown_host`` is set.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from pathlib import Path
from typing import Any

import paramiko

from eqflow.errors import ConfigError, EqflowError

log = logging.getLogger(__name__)


class TunnelError(EqflowError):
    """The SSH connection could not be made."""


class SSHTunnel:
    def __init__(self, host: str, remote_port: int, *, user: str | None = None, port: int | None = None,
                 key_filename: str | None = None, ssh_config: str | None = None,
                 known_hosts: str | None = None, accept_unknown_host: bool = False,
                 remote_host: str = "127.0.0.1", local_port: int = 0) -> None:
        settings: dict[str, Any] = {}
        if ssh_config:
            path = Path(ssh_config).expanduser()
            if not path.exists():
                raise ConfigError(f"ssh_config {path} does not exist")
            settings = paramiko.SSHConfig.from_path(str(path)).lookup(host)
        self.hostname = settings.get("hostname", host)
        self.user = user or settings.get("user") or os.environ.get("USER", "root")
        self.port = int(port or settings.get("port", 22))
        keys = settings.get("identityfile") or []
        self.key_filename = key_filename or (keys[0] if keys else None)
        self.known_hosts = known_hosts
        self.accept_unknown_host = accept_unknown_host
        self.remote = (remote_host, remote_port)
        self.local_port = local_port
        self._client: paramiko.SSHClient | None = None
        self._server: socket.socket | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.reconnects = 0

    def start(self) -> None:
        self._connect()
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", self.local_port))
        self._server.listen(64)
        self.local_port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, name="eqflow-tunnel", daemon=True).start()

    def _connect(self) -> None:
        client = paramiko.SSHClient()
        if self.known_hosts:
            client.load_host_keys(str(Path(self.known_hosts).expanduser()))
        else:
            client.load_system_host_keys()
        policy = paramiko.AutoAddPolicy() if self.accept_unknown_host else paramiko.RejectPolicy()
        client.set_missing_host_key_policy(policy)
        try:
            client.connect(self.hostname, port=self.port, username=self.user,
                           key_filename=os.path.expanduser(self.key_filename) if self.key_filename else None,
                           timeout=15, banner_timeout=15, auth_timeout=15, allow_agent=False,
                           look_for_keys=self.key_filename is None)
        except (paramiko.SSHException, OSError) as exc:
            raise TunnelError(f"SSH to {self.user}@{self.hostname}:{self.port} failed: {exc}") from exc
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        self._client = client

    def ensure(self) -> None:
        """Reconnect if the SSH connection dropped."""
        with self._lock:
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                log.warning("SSH tunnel down; reconnecting", extra={"host": self.hostname})
                if self._client is not None:
                    self._client.close()
                self._connect()
                self.reconnects += 1

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        if self._client is not None:
            self._client.close()

    def drop(self) -> None:
        """Close the SSH connection (tests use this to check that the tunnel comes back)."""
        if self._client is not None:
            self._client.close()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, addr = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(conn, addr), daemon=True).start()

    def _forward(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        try:
            self.ensure()
            assert self._client is not None
            transport = self._client.get_transport()
            assert transport is not None
            channel = transport.open_channel("direct-tcpip", self.remote, addr)
        except Exception as exc:  # the client sees a closed connection and retries
            log.warning("tunnel could not open a channel", extra={"error": str(exc)})
            conn.close()
            return
        try:
            while True:
                readable, _, _ = select.select([conn, channel], [], [], 30)
                if conn in readable:
                    data = conn.recv(65536)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in readable:
                    data = channel.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)
        except OSError:
            pass
        finally:
            channel.close()
            conn.close()
