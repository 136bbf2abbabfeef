"""The service with several processes (`workers` in its config): uvicorn's workers share the port,
each builds its app from the config as given, command-line overrides included."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import yaml

from eqflow.db.embedded import free_port
from eqflow.service_queue import ServiceTaskQueue
from tests.service_fixtures import TOKEN


def _service_processes(pid: int) -> list[psutil.Process]:
    """The uvicorn workers under the supervisor (spawned processes, not multiprocessing's helper)."""
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()) and "EQFLOW_SERVICE_CONFIG" in child.environ():
                out.append(child)
        except psutil.Error:
            pass
    return out


def test_two_processes_serve_the_api_from_the_config_as_given(db_url, tmp_path):
    written_port, port = free_port(), free_port()
    cfg = tmp_path / "service.yaml"
    cfg.write_text(yaml.safe_dump({"service": {"db_url": db_url, "port": written_port, "tokens": [TOKEN],
                                               "workers": 2}}))
    log = tmp_path / "log"
    proc = subprocess.Popen([sys.executable, "-m", "eqflow.cli", "service", "start", "--cfg", str(cfg),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while len(_service_processes(proc.pid)) < 2 or not _answers(url):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        workers = _service_processes(proc.pid)
        assert len(workers) == 2
        [path] = {Path(w.environ()["EQFLOW_SERVICE_CONFIG"]) for w in workers}
        assert path.stat().st_mode & 0o777 == 0o600  # it holds the tokens
        assert yaml.safe_load(path.read_text())["service"]["port"] == port  # the --port given
        assert "2 processes" in log.read_text()

        # the API works whichever process answers (many connections, spread by the kernel)
        queues = [ServiceTaskQueue(url, TOKEN) for _ in range(6)]
        try:
            futures = [q.submit_many("procs", 3, [f"{i}-{j}" for j in range(5)]) for i, q in enumerate(queues)]
            for q in queues:
                claimed = q.claim(3, n=5, pool="p")
                q.report([(t, t.payload.upper()) for t in claimed])
            for i, futs in enumerate(futures):
                assert [f.result(timeout=30) for f in futs] == [f"{i}-{j}".upper() for j in range(5)]
        finally:
            for q in queues:
                q.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not path.exists()  # removed when the service stops


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
