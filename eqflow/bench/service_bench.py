"""`eqflow bench service`: end-to-end tasks/s and latency through the EMEWS service, beside the
same figures straight to PostgreSQL, in one run."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from eqflow.bench.queue_bench import bench_database, bench_end_to_end, bench_latency
from eqflow.db.embedded import free_port
from eqflow.queue import LocalTaskQueue
from eqflow.service_queue import ServiceTaskQueue


def _start_service(db_url: str, token: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    folder = Path(tempfile.mkdtemp(prefix="eqflow-bench-svc-"))
    port = free_port()
    cfg = folder / "service.yaml"
    cfg.write_text(yaml.safe_dump({"service": {"db_url": db_url, "port": port, "tokens": [token]}}))
    os.chmod(cfg, 0o600)
    proc = subprocess.Popen([sys.executable, "-m", "eqflow.cli", "service", "start", "--cfg", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url, cfg
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the service did not start")


def run(url: str | None = None, *, n_e2e: int = 20_000, workers: int = 4, batch: int = 100,
        latency_rounds: int = 200, progress: Any = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    db_url = bench_database(url)
    token = secrets.token_urlsafe(16)
    proc, service_url, cfg = _start_service(db_url, token)
    local = LocalTaskQueue(db_url, migrate=False)
    remote = ServiceTaskQueue(service_url, token)
    try:
        say("end to end, local")
        e2e_local = bench_end_to_end(local, n_e2e, workers, batch, task_type=10)
        say("end to end, service")
        e2e_service = bench_end_to_end(remote, n_e2e, workers, batch, target=(service_url, token), task_type=11)
        say("latency, local")
        p50_local, p95_local = bench_latency(local, latency_rounds, task_type=30)
        say("latency, service")
        p50_service, p95_service = bench_latency(remote, latency_rounds, target=(service_url, token), task_type=31)
    finally:
        remote.close()
        local.close()
        proc.terminate()
        proc.wait(timeout=10)
        cfg.unlink(missing_ok=True)
    return {
        "end_to_end_tasks_per_s": {"local": round(e2e_local), "service": round(e2e_service)},
        "latency_p50_ms": {"local": round(p50_local, 2), "service": round(p50_service, 2)},
        "latency_p95_ms": {"local": round(p95_local, 2), "service": round(p95_service, 2)},
        "tasks": n_e2e, "workers": workers, "claim_batch": batch,
    }
