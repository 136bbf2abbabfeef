"""The live dashboard (#12) against real parts: the EMEWS service in a real uvicorn, a real pool
process, PostgreSQL, and headless Chromium (tests/browser.py). Screenshots: test-artifacts/dashboard-*.png."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx

from eqflow.dashboard import queries
from eqflow.dashboard.routes import COOKIE, session_value
from eqflow.db.embedded import free_port
from eqflow.queue import LocalTaskQueue
from tests.browser import browser, context, image_variation, network, page, screenshot  # noqa: F401
from tests.conftest import sql, wait_for
from tests.service_fixtures import TOKEN, ServiceProcess

EVIL_EXP = 'dash <b>"exp"</b> & co'
EVIL_ERROR = "<b>boom</b><img src=x onerror=\"window.pwned=1\">\nTraceback line 2\n" + "x" * 300


def _seed(db_url: str, exp_id: str = EVIL_EXP) -> None:
    """An experiment with queued tasks, one failed task (an HTML-looking error) and progress events."""
    with LocalTaskQueue(db_url, migrate=False) as q:
        q.create_experiment(exp_id)
        q.submit_many(exp_id, 3, ['{"seconds": 0}'] * 5)
        q.submit_many(exp_id, 4, ["fails"])
        (claimed,) = q.claim(4, pool="seed-pool")
        q.report_failure([(claimed, EVIL_ERROR)], retry=False)
        for done, best in ((1, 9.5), (3, 4.25)):
            q.record_event(exp_id, "progress", {"done": done, "target": 10, "best": best, "retrains": 0, "pools": 1})
        q.record_event(exp_id, "pool_started", {"pool": "p1", "launcher": "local", "job_id": "123"})


def _db_counts(db_url: str, exp_id: str) -> dict[str, int]:
    counts = dict.fromkeys(queries.STATUSES, 0)
    rows = sql(db_url, "SELECT status::text, count(*) FROM tasks WHERE exp_id = %s GROUP BY 1", (exp_id,))
    counts.update({str(s): int(str(n)) for s, n in rows})
    return counts


def _page_counts(page: Any) -> dict[str, int]:  # noqa: F811
    return {s: int(page.locator(f"#count-{s}").inner_text().replace(",", "")) for s in queries.STATUSES}


def _login(page: Any, url: str, token: str = TOKEN) -> None:  # noqa: F811
    page.goto(url + "/dashboard")
    page.wait_for_url("**/dashboard/login")
    page.fill("#token", token)
    page.click("#login-button")


# -- auth over plain HTTP ------------------------------------------------------------------------
def test_api_needs_the_token_or_the_login_cookie(service: ServiceProcess, db_url: str) -> None:
    _seed(db_url)
    base = service.url + "/dashboard"
    exp = {"exp_id": EVIL_EXP}
    for path, params in (("/api/experiments", {}), ("/api/snapshot", exp), ("/api/stream", exp)):
        r = httpx.get(base + path, params=params)
        assert r.status_code == 401, path
        assert httpx.get(base + path, params=params, cookies={COOKIE: "forged"}).status_code == 401
        assert httpx.get(base + path, params=params, headers={"Authorization": "Bearer wrong"}).status_code == 401
    answer = httpx.get(base, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/login"
    assert httpx.post(base + "/login", data={"token": "wrong"}, follow_redirects=False).status_code == 401

    login = httpx.post(base + "/login", data={"token": TOKEN}, follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/dashboard"  # no token in any URL
    set_cookie = login.headers["set-cookie"]
    assert "httponly" in set_cookie.lower() and "samesite=strict" in set_cookie.lower()
    assert TOKEN not in set_cookie  # the cookie holds a digest of the token
    cookie = login.cookies[COOKIE]
    assert cookie == session_value(TOKEN.encode())
    snap = httpx.get(base + "/api/snapshot", params=exp, cookies={COOKIE: cookie})
    assert snap.status_code == 200 and snap.json()["tasks"]["total"] == 6
    bearer = httpx.get(base + "/api/snapshot", params=exp, headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200
    assert httpx.get(base, cookies={COOKIE: cookie}).status_code == 200
    # The cookie is no bearer token for the task API.
    assert httpx.get(service.url + "/v1/stats", headers={"Authorization": f"Bearer {cookie}"}).status_code == 401
    with httpx.stream("GET", base + "/api/stream", params=exp, cookies={COOKIE: cookie}, timeout=10) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        data = next(line for line in stream.iter_lines() if line.startswith("data: "))
    assert json.loads(data[6:])["snapshot"]["tasks"]["failed"] == 1
    assert httpx.get(base + "/static/dashboard.js").status_code == 200
    assert httpx.get(base + "/static/..%2Froutes.py").status_code == 404


# -- the browser ---------------------------------------------------------------------------------
def test_dashboard_in_chromium_is_live_and_equals_the_database(service: ServiceProcess, db_url: str,
                                                                page: Any, network: Any) -> None:  # noqa: F811
    _seed(db_url)
    page.goto(service.url + "/dashboard")
    page.wait_for_url("**/dashboard/login")
    screenshot(page, "dashboard-login")
    page.fill("#token", TOKEN)
    page.click("#login-button")
    page.wait_for_url("**/dashboard")
    assert TOKEN not in page.url
    page.locator("#experiments button", has_text=EVIL_EXP).click()
    page.wait_for_function("() => window.eqflowDashboard.updates > 0 && "
                           "document.getElementById('count-total').textContent === '6'")
    assert _page_counts(page) == _db_counts(db_url, EVIL_EXP)
    # User data is text, never markup: the exp_id and the error show literally, nothing ran.
    assert page.locator("#exp-title").inner_text() == EVIL_EXP
    assert page.locator("#experiments b, #failures b, #failures img").count() == 0
    assert page.evaluate("window.pwned") is None
    summary = page.locator("#failures summary").first
    assert "<b>boom</b>" in summary.inner_text()
    summary.click()  # expandable: the whole error
    assert "Traceback line 2" in page.locator("#failures pre").first.inner_text()
    assert page.locator("#progress-panel").get_attribute("data-panel") == "optimization"
    assert "4.25" in page.locator("#progress-body").inner_text()
    assert page.locator("#timeline-chart circle.pool_started").count() == 1
    screenshot(page, "dashboard-seeded")

    loaded_at = page.evaluate("window.eqflowDashboard.loadedAt")
    updates = page.evaluate("window.eqflowDashboard.updates")
    pool = subprocess.Popen([sys.executable, "-m", "eqflow.cli", "pool", "run", "--types", "3", "--fn",
                             "eqflow.workers.tasks:sleep", "--db", db_url, "--workers", "2", "--name", "dashpool",
                             "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with LocalTaskQueue(db_url, migrate=False) as q:
            q.submit_many(EVIL_EXP, 3, ['{"seconds": 0.4}'] * 24)
        seen: list[int] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            seen.append(_page_counts(page)["complete"])
            if seen[-1] == 29:
                break
            time.sleep(0.25)
        assert seen[-1] == 29, seen
        steps = sorted(set(seen))
        assert len(steps) >= 3, f"the page should count up while the pool works, saw {steps}"
        assert seen == sorted(seen)
        # Settled: the page equals the database, pool row included.
        assert wait_for(lambda: _page_counts(page) == _db_counts(db_url, EVIL_EXP), timeout=10)
        (label, done), = sql(db_url, "SELECT pool, count(*) FROM tasks WHERE exp_id = %s AND status = 'complete' "
                                     "GROUP BY pool", (EVIL_EXP,))
        row = page.locator(f'#pools tr[data-pool="{label}"]')
        assert wait_for(lambda: row.locator(".pool-done").inner_text() == str(done), timeout=10)
        screenshot(page, "dashboard-live")
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(timeout=30)
    # No reload: the same document all along, redrawn many times.
    assert page.evaluate("window.eqflowDashboard.loadedAt") == loaded_at
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert page.evaluate("window.eqflowDashboard.updates") > updates + 3
    colours, _ = image_variation(screenshot(page, "dashboard-live"))
    assert colours > 20
    assert network.external() == [] and network.refused == []


def test_without_the_cookie_the_page_goes_to_login(service: ServiceProcess, db_url: str, page: Any,  # noqa: F811
                                                  context: Any) -> None:  # noqa: F811
    _seed(db_url, "plain-exp")
    _login(page, service.url)
    page.wait_for_url("**/dashboard")
    page.wait_for_function("() => window.eqflowDashboard.updates > 0")
    context.clear_cookies()  # a logout elsewhere, or the token rotated away
    page.evaluate("window.eqflowDashboard.reconnect()")
    page.wait_for_url("**/dashboard/login")
    page.goto(service.url + "/dashboard")
    page.wait_for_url("**/dashboard/login")
    _login(page, service.url, "not-the-token")
    assert page.locator("#login-error").is_visible()
    screenshot(page, "dashboard-login-refused")
    _login(page, service.url)
    page.wait_for_url("**/dashboard")
    page.click("#logout button")
    page.wait_for_url("**/dashboard/login")
    assert httpx.get(service.url + "/dashboard/api/experiments").status_code == 401


# -- eqflow dashboard, standalone ------------------------------------------------------------------
def _standalone(db_url: str, port: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "eqflow.cli", "dashboard", "--url", db_url, "--port", str(port),
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})


def _up(url: str, proc: subprocess.Popen[bytes], headers: dict[str, str] | None = None) -> None:
    def ready() -> bool:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            return httpx.get(url, headers=headers, timeout=2).status_code in (200, 401)
        except httpx.TransportError:
            return False

    assert wait_for(ready, timeout=30)


def test_eqflow_dashboard_standalone_serves_the_json_api(db_url: str) -> None:
    _seed(db_url, "solo-exp")
    port = free_port()
    proc = _standalone(db_url, port)
    try:
        base = f"http://127.0.0.1:{port}/dashboard"
        _up(base + "/api/experiments", proc)
        listed = httpx.get(base + "/api/experiments").json()["experiments"]
        assert [e["exp_id"] for e in listed] == [r[0] for r in sql(db_url, "SELECT exp_id FROM experiments")]
        snap = httpx.get(base + "/api/snapshot", params={"exp_id": "solo-exp"}).json()
        db = _db_counts(db_url, "solo-exp")
        assert {s: snap["tasks"][s] for s in queries.STATUSES} == db
        assert snap["tasks"]["total"] == sum(db.values()) == 6
        assert snap["timeline"]["points"][-1]["queued"] == db["queued"]
        assert snap["failures"][0]["error"] == EVIL_ERROR
        assert snap["progress"] == {"done": 3, "target": 10, "best": 4.25, "retrains": 0, "pools": 1}
        assert httpx.get(base).status_code == 200  # no login on loopback without a token
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)  # stops at once (uvicorn re-raises SIGTERM)


def test_eqflow_dashboard_standalone_binds_beyond_loopback_only_with_a_token(db_url: str) -> None:
    refused = subprocess.run([sys.executable, "-m", "eqflow.cli", "dashboard", "--url", db_url, "--host", "0.0.0.0",
                              "--port", "0"], capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "EQFLOW_DASHBOARD_TOKEN"})
    assert refused.returncode == 2 and "EQFLOW_DASHBOARD_TOKEN" in refused.stderr
    helped = subprocess.run([sys.executable, "-m", "eqflow.cli", "dashboard", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert "127.0.0.1" in helped.stdout and "EQFLOW_DASHBOARD_TOKEN" in helped.stdout
    port = free_port()
    proc = _standalone(db_url, port, env={"EQFLOW_DASHBOARD_TOKEN": "solo-token"})
    try:
        url = f"http://127.0.0.1:{port}/dashboard/api/experiments"
        _up(url, proc)
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer solo-token"}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# -- the queries, on a real database -------------------------------------------------------------
def test_sampled_timeline_ends_at_the_exact_counts(queue: LocalTaskQueue, db_url: str) -> None:
    queue.submit_many("tl", 1, ["p"] * 40)
    queue.cancel(queue.submit_many("tl", 1, ["c"] * 3))
    claimed = queue.claim(1, n=15, pool="tl-pool")
    queue.report([(t, "ok") for t in claimed[:10]])
    queue.report_failure([(t, "bad") for t in claimed[10:12]], retry=False)
    counts = _db_counts(db_url, "tl")
    for sample in (1000, 7):  # every task, then 1 in ~6
        tl = queries.timeline(queue.db, "tl", counts, sample=sample)
        last = tl["points"][-1]
        assert {s: last[s] for s in queries.STATUSES} == counts, (sample, tl)
        assert (tl["step"] > 1) == (sample == 7)
    assert queries.bucket_width(59) == 1 and queries.bucket_width(3600) == 60 and queries.bucket_width(10**6) == 21600


def test_failures_are_read_again_when_their_count_changes(queue: LocalTaskQueue) -> None:
    queue.submit_many("fx", 2, ["a", "b"])
    first, second = queue.claim(2, n=2, pool="fx-pool")
    memo: dict[Any, Any] = {}
    assert queries.snapshot(queue.db, "fx", memo)["failures"] == []
    queue.report_failure([(first, "first error")], retry=False)
    assert [f["error"] for f in queries.snapshot(queue.db, "fx", memo)["failures"]] == ["first error"]
    queue.report_failure([(second, "second error")], retry=False)
    snap = queries.snapshot(queue.db, "fx", memo)
    assert [f["error"] for f in snap["failures"]] == ["second error", "first error"]  # newest first
    assert snap["tasks"]["failed"] == 2 and snap["pools"] == []


def test_an_open_stream_does_not_hold_up_the_service_stopping(service: ServiceProcess, db_url: str) -> None:
    import threading

    _seed(db_url, "held-exp")
    lines: list[str] = []

    def watch() -> None:
        try:
            with httpx.stream("GET", service.url + "/dashboard/api/stream", params={"exp_id": "held-exp"},
                              headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as stream:
                lines.extend(line for line in stream.iter_lines() if line.startswith("data: "))
        except httpx.HTTPError:
            pass

    viewer = threading.Thread(target=watch, daemon=True)
    viewer.start()
    assert wait_for(lambda: len(lines) >= 2, timeout=30)  # live: a snapshot every second
    assert service.proc is not None
    started = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    service.proc.wait(timeout=30)
    assert time.monotonic() - started < 5  # not the stream's 20 s lifetime
    viewer.join(timeout=10)
    assert not viewer.is_alive()
