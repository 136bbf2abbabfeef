"""Issue #14: the EMEWS service under hostile or unlucky conditions, against a real uvicorn
process and a real PostgreSQL: hundreds of idle long-polls, unauthenticated giant bodies,
silent clients, anonymous visitors, and a database that is down."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from eqflow.db.embedded import EmbeddedPostgres, free_port
from eqflow.queue import LocalTaskQueue
from tests.service_fixtures import TOKEN, ServiceProcess

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BIG = 60 * 1024 * 1024


def run_in_fresh_loop(coro: Any) -> Any:
    """asyncio.run in a thread of its own: Playwright's sync API (session-scoped browser fixtures of
    other test files) keeps an event loop running in the main thread."""
    with ThreadPoolExecutor(1) as runner:
        return runner.submit(asyncio.run, coro).result()


def db_secrets(url: str) -> list[str]:
    """How a database URL's parts would show in a page (a user or database named "eqflow", the
    service's own name, is looked for as it would be written in a connection string or message)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    out = [str(info[k]) for k in ("port", "host", "password") if info.get(k)]
    for key in ("user", "dbname"):
        if name := info.get(key):
            out += [name] if name != "eqflow" else [f"{key}={name}", f"{name}@", f"/{name}", f"'{name}'",
                                                    f'"{name}"', f"{key} {name}", f"database {name}"]
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def headers_only(port: int, path: str, length: int, token: str | None = None) -> socket.socket:
    """A raw connection that sends a request's headers, declaring a body of ``length`` bytes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
                 f"Content-Length: {length}\r\n\r\n".encode())
    return sock


def read_until_closed(sock: socket.socket, limit_s: float) -> bytes:
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


# -- 2: long-polls never hold a thread, never starve short requests -----------------------------------
def test_500_long_polls_do_not_starve_short_requests(service, db_url):
    seed = LocalTaskQueue(db_url, migrate=False)
    [watched] = seed.submit_many("lp-watched", 78, ["never claimed until the end"])

    async def scenario() -> None:
        limits = httpx.Limits(max_connections=700, max_keepalive_connections=700)
        async with httpx.AsyncClient(base_url=service.url, headers=AUTH, limits=limits,
                                     timeout=httpx.Timeout(60, pool=60)) as client:
            claims = [asyncio.create_task(client.post("/v1/tasks/claim", json={
                "task_types": [77], "n": 1, "pool": f"idle-{i}", "timeout": 20})) for i in range(400)]
            polls = [asyncio.create_task(client.post("/v1/tasks/completions", json={
                "task_ids": [watched.task_id], "exp_ids": ["lp-watched"], "timeout": 20})) for _ in range(100)]
            deadline = time.monotonic() + 20
            waiting = 0
            while time.monotonic() < deadline and waiting < 500:
                await asyncio.sleep(0.25)
                health = await client.get("/health")
                waiting = health.json().get("long_polls", 0) if health.status_code == 200 else 0

            started = time.perf_counter()
            submit = await client.post("/v1/tasks", json={"exp_id": "short", "task_type": 5, "payloads": ["x"]})
            submit_s = time.perf_counter() - started
            started = time.perf_counter()
            stats = await client.get("/v1/stats")
            stats_s = time.perf_counter() - started
            started = time.perf_counter()
            health = await client.get("/health")
            health_s = time.perf_counter() - started
            # A functional bound (before the fix these took ~20 s, the long-polls' timeout);
            # the < 100 ms goal is measured by `eqflow bench service --long-polls 500`.
            assert submit.status_code == 200 and submit_s < 2.0, submit_s
            assert stats.status_code == 200 and stats_s < 2.0, stats_s
            assert health.status_code == 200 and health_s < 2.0, health_s
            assert waiting == 500 and health.json()["long_polls"] == 500
            assert not any(t.done() for t in claims + polls)  # all still waiting: nothing was there

            # Work arrives: each waiting claim is woken and takes exactly one task, none twice.
            submitted = (await client.post("/v1/tasks", json={
                "exp_id": "lp-work", "task_type": 77, "payloads": [str(i) for i in range(400)]})).json()["task_ids"]
            claimed = []
            for response in await asyncio.wait_for(asyncio.gather(*claims), 30):
                assert response.status_code == 200
                [task] = response.json()["tasks"]
                claimed.append(task["task_id"])
            assert sorted(claimed) == sorted(submitted)

            [task] = await asyncio.to_thread(seed.claim, 78, pool="end")
            await asyncio.to_thread(seed.report, [(task, "done")])
            for response in await asyncio.wait_for(asyncio.gather(*polls), 30):
                assert response.status_code == 200
                assert [r[0] for r in response.json()["finished"]] == [watched.task_id]
            assert (await client.get("/health")).json()["long_polls"] == 0

    try:
        run_in_fresh_loop(scenario())
    finally:
        seed.close()


def test_long_polls_still_time_out_and_validate(service):
    started = time.monotonic()
    empty = httpx.post(service.url + "/v1/tasks/claim", headers=AUTH, timeout=10,
                       json={"task_types": [91], "timeout": 1})
    assert empty.status_code == 200 and empty.json() == {"tasks": []}
    assert 0.9 <= time.monotonic() - started < 5
    bad = httpx.post(service.url + "/v1/tasks/claim", headers=AUTH, timeout=10,
                     json={"task_types": [91], "n": 0, "timeout": 5})
    assert bad.status_code == 422 and bad.json()["error"]["type"] == "InvalidInput"
    started = time.monotonic()
    nothing = httpx.post(service.url + "/v1/tasks/completions", headers=AUTH, timeout=10,
                         json={"task_ids": [424242], "exp_ids": ["nobody"], "timeout": 1})
    assert nothing.status_code == 200 and nothing.json() == {"finished": []}
    assert 0.9 <= time.monotonic() - started < 5


def test_a_long_poll_whose_client_left_ends_and_claims_nothing(db_url):
    svc = ServiceProcess(db_url, long_poll_check_s=1).start()
    try:
        body = b'{"task_types": [93], "pool": "gone", "timeout": 20}'
        socks = [headers_only(svc.port, "/v1/tasks/claim", len(body), TOKEN) for _ in range(5)]
        for sock in socks:
            sock.sendall(body)
        deadline = time.monotonic() + 10
        while httpx.get(svc.url + "/health", headers=AUTH).json()["long_polls"] < 5:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for sock in socks:
            sock.close()  # the pools went away while waiting
        [task_id] = httpx.post(svc.url + "/v1/tasks", headers=AUTH, json={
            "exp_id": "gone", "task_type": 93, "payloads": ["for a live pool"]}).json()["task_ids"]
        while httpx.get(svc.url + "/health", headers=AUTH).json()["long_polls"] > 0:
            assert time.monotonic() < deadline, "waiters of gone clients linger"
            time.sleep(0.1)
        with psycopg.connect(db_url) as conn:  # woken, they saw the client gone and took nothing
            assert conn.execute("SELECT status::text FROM tasks WHERE task_id = %s", (task_id,)).fetchone() \
                == ("queued",)
    finally:
        svc.cleanup()


# -- 7: the token is checked before the body is read; silent bodies are dropped ------------------------
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_unauthenticated_request_gets_401_before_sending_its_body(service, token):
    sock = headers_only(service.port, "/v1/tasks", BIG, token)
    try:
        sock.settimeout(5)
        head = sock.recv(65536)  # no body byte was sent
        assert head.startswith(b"HTTP/1.1 401"), head[:200]
        assert b"www-authenticate: Bearer" in head.lower().replace(b"bearer", b"Bearer")
        read_until_closed(sock, 5)  # and the server hangs up instead of swallowing 60 MB
    finally:
        sock.close()


def test_unauthenticated_giant_bodies_do_not_grow_the_service(service, db_url):
    assert service.proc is not None
    pid = service.proc.pid
    before = rss_mb(pid)
    peak = before
    body = b"x" * BIG

    def send(token: str | None) -> None:
        sock = headers_only(service.port, "/v1/tasks", len(body), token)
        try:
            sock.sendall(body)
        except OSError:  # the server answered 401 and hung up mid-body
            pass
        finally:
            sock.close()

    threads = [threading.Thread(target=send, args=(t,)) for t in (None, "bad", None, "bad")]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mb(pid))
        time.sleep(0.02)
    for t in threads:
        t.join()
    peak = max(peak, rss_mb(pid))
    assert peak - before < 40, f"RSS {before:.0f} MB -> {peak:.0f} MB"
    assert httpx.get(service.url + "/health").status_code == 200
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (0,)


def test_a_client_that_goes_silent_mid_body_is_dropped(db_url):
    svc = ServiceProcess(db_url, body_timeout_s=1).start()
    try:
        sock = headers_only(svc.port, "/v1/tasks", 1_000_000, TOKEN)
        sock.sendall(b'{"exp_id": "slow", "task_type": 1, "payloads": ["')
        started = time.monotonic()
        answer = read_until_closed(sock, 10)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - started < 5
        # a body that keeps coming, even slowly, is read in full
        ok = httpx.post(svc.url + "/v1/tasks", headers={**AUTH, "Content-Type": "application/json"}, timeout=10,
                        content=_trickle(b'{"exp_id": "slow", "task_type": 1, "payloads": ["a"]}', 0.3))
        assert ok.status_code == 200, ok.text
    finally:
        svc.cleanup()


def _trickle(data: bytes, pause: float):
    for i in range(0, len(data), 10):
        time.sleep(pause)
        yield data[i:i + 10]


# -- 8: anonymous visitors see liveness only -------------------------------------------------------
def test_unauthenticated_pages_show_no_counts_pools_or_database(service, db_url):
    queue = LocalTaskQueue(db_url, migrate=False)
    try:
        queue.register_pool("secret-pool-name", [5])
        queue.submit_many("leak", 5, ["a", "b", "c"])
    finally:
        queue.close()
    secrets = db_secrets(db_url)
    for path in ("/", "/health", f"/?token={TOKEN}"):
        response = httpx.get(service.url + path, timeout=10)
        assert response.status_code == 200
        text = response.text
        for secret in secrets + ["secret-pool-name", "queued", "<table", "version"]:
            assert secret not in text, (path, secret, text)
    assert httpx.get(service.url + "/health").json() == {"status": "ok", "database": "ok"}

    page = httpx.get(service.url + "/", headers=AUTH, timeout=10)
    assert page.status_code == 200
    assert "secret-pool-name" in page.text and "queued" in page.text
    health = httpx.get(service.url + "/health", headers=AUTH, timeout=10)
    assert health.json()["database"] == "ok" and "version" in health.json()
    for text in (page.text, health.text):
        for secret in secrets:
            assert secret not in text, secret
    wrong = httpx.get(service.url + "/", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert "secret-pool-name" not in wrong.text


# -- 3: /health answers at once when the database is down ------------------------------------------
def _start_whatever_the_database(svc: ServiceProcess) -> None:
    import subprocess
    import sys

    svc.proc = subprocess.Popen([sys.executable, "-m", "eqflow.cli", "service", "start", "--cfg", str(svc.cfg)],
                                stdout=subprocess.DEVNULL, stderr=open(svc.dir / "log", "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(svc.url + "/openapi.json", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError((svc.dir / "log").read_text()[-2000:])


def _assert_answers_unavailable_at_once(svc: ServiceProcess, secrets: list[str]) -> None:
    for headers in ({}, AUTH):
        started = time.monotonic()
        health = httpx.get(svc.url + "/health", headers=headers, timeout=30)
        assert time.monotonic() - started < 1.5
        assert health.status_code == 503
        assert health.json()["status"] == "ok" and health.json()["database"] == "unavailable"
        started = time.monotonic()
        page = httpx.get(svc.url + "/", headers=headers, timeout=30)
        assert time.monotonic() - started < 1.5
        assert "unavailable" in page.text if headers else page.status_code == 200
        for secret in secrets:
            assert secret not in health.text and secret not in page.text, secret


def test_health_answers_at_once_when_the_database_never_was_there():
    port = free_port()
    svc = ServiceProcess(f"postgresql://eqflow_secret_user:pw@127.0.0.1:{port}/nodb")
    try:
        _start_whatever_the_database(svc)
        _assert_answers_unavailable_at_once(svc, ["eqflow_secret_user", str(port), "nodb", "pw@"])
    finally:
        svc.cleanup()


def test_health_answers_at_once_when_the_database_goes_down():
    home = Path(tempfile.mkdtemp(prefix="eqflow-down-"))
    cluster = EmbeddedPostgres(home)
    url = cluster.ensure_running()
    svc = ServiceProcess(url, db_wait_s=2)
    try:
        svc.start()
        assert httpx.post(svc.url + "/v1/tasks", headers=AUTH, timeout=30,
                          json={"exp_id": "down", "task_type": 1, "payloads": ["a"]}).status_code == 200
        cluster.stop()
        time.sleep(0.6)  # the database's state as /health tells it is at most HEALTH_TTL_S (0.5 s) old
        _assert_answers_unavailable_at_once(svc, db_secrets(url))
        started = time.monotonic()  # a request waits db_wait_s for the database, then gets 503 (clients retry)
        stats = httpx.get(svc.url + "/v1/stats", headers=AUTH, timeout=30)
        assert stats.status_code == 503 and time.monotonic() - started < 10
        assert stats.json()["error"]["type"] == "DatabaseUnavailable"
        for secret in db_secrets(url):
            assert secret not in stats.text, secret
        cluster.ensure_running()  # back: /health says so again
        deadline = time.monotonic() + 15
        while httpx.get(svc.url + "/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        svc.cleanup()
        cluster.reset()
        shutil.rmtree(home, ignore_errors=True)
