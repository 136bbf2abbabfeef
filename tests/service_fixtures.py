"""A real uvicorn server running the EMEWS service, and a real sshd on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from eqflow.db.embedded import free_port

TOKEN = "test-token-0123456789"


class ServiceProcess:
    def __init__(self, db_url: str, tokens: list[str] | None = None, **limits: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eqflow-svc-"))
        self.port = free_port()
        self.cfg = self.dir / "service.yaml"
        self.cfg.write_text(yaml.safe_dump({"service": {"db_url": db_url, "port": self.port,
                                                        "tokens": tokens or [TOKEN], **limits}}))
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "eqflow.cli", "service", "start", "--cfg", str(self.cfg)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "wb"))  # noqa: SIM115
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"service did not start: {(self.dir / 'log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def sshd_missing() -> str | None:
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        return "sshd not installed (Debian: apt-get install openssh-server)"
    if os.geteuid() != 0:
        return "the test sshd logs in as root with a generated key"
    return None


class SSHServer:
    """sshd on 127.0.0.1:<free port> with a generated host key; root logs in with a generated key."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="eqflow-sshd-"))
        os.chmod(self.dir, 0o700)
        self.port = free_port()
        self.host_key = self.dir / "host_ed25519"
        self.client_key = self.dir / "client_ed25519"
        self.known_hosts = self.dir / "known_hosts"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SSHServer:
        for key in (self.host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        authorized = self.dir / "authorized_keys"
        authorized.write_text((self.client_key.with_suffix(".pub")).read_text())
        authorized.chmod(0o600)
        host_pub = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        config = self.dir / "sshd_config"
        config.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowTcpForwarding yes
StrictModes no
""")
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation folder
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=open(self.dir / "log", "wb"))  # noqa: SIM115
        deadline = time.monotonic() + 15
        import socket

        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"sshd did not start: {(self.dir / 'log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
