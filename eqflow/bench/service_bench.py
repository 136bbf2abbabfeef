"""`eqflow bench service`: end-to-end tasks/s and latency through the EMEWS service, beside the
same figures straight to PostgreSQL, in one run.

`python -m eqflow.bench.service_bench --long-polls 500`: short-request latency (p50/p99) and the
service's RSS while 500 idle long-polls wait and 20 active clients submit, claim, report and
read stats; the same without the long-polls, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from eqflow.bench.queue_bench import bench_database, bench_end_to_end, bench_latency
from eqflow.db.embedded import free_port
from eqflow.queue import LocalTaskQueue
from eqflow.service_queue import ServiceTaskQueue


def _start_service(db_url: str, token: str, processes: int = 1) -> tuple[subprocess.Popen[bytes], str, Path]:
    folder = Path(tempfile.mkdtemp(prefix="eqflow-bench-svc-"))
    port = free_port()
    cfg = folder / "service.yaml"
    cfg.write_text(yaml.safe_dump({"service": {"db_url": db_url, "port": port, "tokens": [token],
                                               "workers": processes}}))
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
        latency_rounds: int = 200, processes: int | None = None, rounds: int = 3,
        progress: Any = None) -> dict[str, Any]:
    """The service with ``processes`` uvicorn workers (default: one per core): end to end and
    latency, each in ``rounds`` alternating pairs with the same figure straight to PostgreSQL
    (a ratio per pair and their median: on a noisy machine one pair says little). Then one
    pair with a single service process, for comparison."""
    say = progress or (lambda msg: None)
    processes = processes or os.cpu_count() or 1
    rounds = max(1, rounds)
    db_url = bench_database(url)
    token = secrets.token_urlsafe(16)
    local = LocalTaskQueue(db_url, migrate=False)
    pairs: list[tuple[float, float]] = []
    latencies: list[tuple[float, float, float, float]] = []
    try:
        for n in dict.fromkeys([processes, 1]):
            proc, service_url, cfg = _start_service(db_url, token, n)
            remote = ServiceTaskQueue(service_url, token)
            target = (service_url, token)
            try:
                say(f"warm-up ({n} processes)")  # the first run on a fresh table is the slow one
                bench_end_to_end(local, n_e2e // 10, workers, batch, task_type=10)
                bench_end_to_end(remote, n_e2e // 10, workers, batch, target=target, task_type=11)
                for r in range(rounds if n == processes else 1):
                    say(f"end to end, local and service ({n} processes), round {r + 1}")
                    pairs.append((bench_end_to_end(local, n_e2e, workers, batch, task_type=10),
                                  bench_end_to_end(remote, n_e2e, workers, batch, target=target, task_type=11)))
                    if n == processes:
                        say(f"latency, local and service, round {r + 1}")
                        latencies.append((*bench_latency(local, latency_rounds, task_type=30),
                                          *bench_latency(remote, latency_rounds, target=target, task_type=31)))
            finally:
                remote.close()
                proc.terminate()
                proc.wait(timeout=10)
                cfg.unlink(missing_ok=True)
    finally:
        local.close()
    main, single = pairs[:rounds], pairs[rounds:]
    return {
        "end_to_end_tasks_per_s": {"local": [round(a) for a, _ in main], "service": [round(b) for _, b in main]},
        "end_to_end_service_over_local": [round(b / a, 2) for a, b in main],
        "end_to_end_service_over_local_median": round(statistics.median(b / a for a, b in main), 2),
        "latency_p50_ms": {"local": [round(x[0], 2) for x in latencies],
                           "service": [round(x[2], 2) for x in latencies]},
        "latency_p95_ms": {"local": [round(x[1], 2) for x in latencies],
                           "service": [round(x[3], 2) for x in latencies]},
        "latency_p50_service_over_local": [round(x[2] / x[0], 2) for x in latencies],
        "latency_p50_service_over_local_median": round(statistics.median(x[2] / x[0] for x in latencies), 2),
        "one_process": ({"local": round(single[0][0]), "service": round(single[0][1]),
                         "service_over_local": round(single[0][1] / single[0][0], 2)} if single else None),
        "tasks": n_e2e, "workers": workers, "claim_batch": batch, "service_processes": processes, "rounds": rounds,
    }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _hold_long_polls(url: str, token: str, n: int, stop: threading.Event) -> threading.Thread:
    """n claims on a task type nobody submits, each re-sent when it times out, until ``stop``."""

    async def hold() -> None:
        limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                     timeout=httpx.Timeout(60, pool=120)) as client:
            async def one(i: int) -> None:
                while not stop.is_set():
                    await client.post("/v1/tasks/claim", json={"task_types": [999], "pool": f"idle-{i}",
                                                               "timeout": 25})

            tasks = [asyncio.create_task(one(i)) for i in range(n)]
            while not stop.is_set():
                await asyncio.sleep(0.1)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    thread = threading.Thread(target=lambda: asyncio.run(hold()), daemon=True)
    thread.start()
    return thread


def _active_client(url: str, token: str, stop: threading.Event, latencies: dict[str, list[float]]) -> None:
    """Short requests back to back: submit one task, claim it (no wait), report it, read stats."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        def timed(kind: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            started = time.perf_counter()
            response = client.request(method, path, json=body)
            latencies[kind].append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            return response.json()

        while not stop.is_set():
            timed("submit", "POST", "/v1/tasks", {"exp_id": "bench-lp", "task_type": 60, "payloads": ["x"]})
            tasks = timed("claim", "POST", "/v1/tasks/claim", {"task_types": [60], "pool": "active"})["tasks"]
            if tasks:
                timed("report", "POST", "/v1/tasks/report", {"results": [
                    {"task_id": t["task_id"], "claim_id": t["claim_id"], "result": "y"} for t in tasks]})
            timed("stats", "GET", "/v1/stats")


def _long_poll_scenario(db_url: str, long_polls: int, clients: int, duration_s: float,
                        say: Any) -> dict[str, Any]:
    token = secrets.token_urlsafe(16)
    proc, url, cfg = _start_service(db_url, token)
    stop_polls, stop_clients = threading.Event(), threading.Event()
    latencies: dict[str, list[float]] = {k: [] for k in ("submit", "claim", "report", "stats")}
    rss: list[float] = []
    try:
        holder = _hold_long_polls(url, token, long_polls, stop_polls) if long_polls else None
        deadline = time.monotonic() + 60
        waiting = 0
        while long_polls and waiting < long_polls and time.monotonic() < deadline:
            time.sleep(0.25)
            waiting = httpx.get(url + "/health", headers={"Authorization": f"Bearer {token}"}).json()["long_polls"]
        say(f"{waiting} long-polls waiting; {clients} active clients for {duration_s:g}s")
        workers = [threading.Thread(target=_active_client, args=(url, token, stop_clients, latencies))
                   for _ in range(clients)]
        for worker in workers:
            worker.start()
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            rss.append(_rss_mb(proc.pid))
            time.sleep(0.5)
        stop_clients.set()
        for worker in workers:
            worker.join()
        waiting_after = httpx.get(url + "/health", headers={"Authorization": f"Bearer {token}"}).json()["long_polls"]
        stop_polls.set()
        if holder is not None:
            holder.join(timeout=30)
    finally:
        stop_clients.set()
        stop_polls.set()
        proc.terminate()
        proc.wait(timeout=10)
        cfg.unlink(missing_ok=True)
    every = [v for values in latencies.values() for v in values]
    return {
        "long_polls": long_polls, "long_polls_waiting": waiting_after, "active_clients": clients,
        "short_requests": len(every), "short_requests_per_s": round(len(every) / duration_s),
        "short_p50_ms": round(statistics.median(every), 2) if every else None,
        "short_p99_ms": round(_percentile(every, 0.99), 2),
        "submit_p50_ms": round(statistics.median(latencies["submit"]), 2) if latencies["submit"] else None,
        "submit_p99_ms": round(_percentile(latencies["submit"], 0.99), 2),
        "service_rss_mb": {"median": round(statistics.median(rss), 1) if rss else None,
                           "max": round(max(rss), 1) if rss else None},
    }


def run_long_polls(url: str | None = None, *, long_polls: int = 500, clients: int = 20, duration_s: float = 15.0,
                   progress: Any = None) -> dict[str, Any]:
    """Short requests with and without ``long_polls`` idle long-polls waiting in the service."""
    say = progress or (lambda msg: None)
    db_url = bench_database(url)
    say("baseline: no long-polls")
    baseline = _long_poll_scenario(db_url, 0, clients, duration_s, say)
    say(f"with {long_polls} long-polls")
    loaded = _long_poll_scenario(db_url, long_polls, clients, duration_s, say)
    return {"baseline": baseline, "with_long_polls": loaded}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eqflow.bench.service_bench", description=__doc__)
    parser.add_argument("--url", default=None, help="database URL (default: the configured or embedded one)")
    parser.add_argument("--long-polls", type=int, default=500)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    figures = run_long_polls(args.url, long_polls=args.long_polls, clients=args.clients, duration_s=args.seconds,
                             progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
