"""The EMEWS service over real HTTP: auth, bad input, restarts, the SSH tunnel, and
property-based API testing against its OpenAPI schema."""

import threading
import time

import httpx
import pytest

from eqflow import AuthError, LocalTaskQueue, as_completed
from eqflow.service_queue import ServiceTaskQueue
from eqflow.tunnel import SSHTunnel, TunnelError
from tests.conftest import sql
from tests.service_fixtures import TOKEN, ServiceProcess, SSHServer, sshd_missing


@pytest.fixture()
def service(db_url):
    svc = ServiceProcess(db_url, max_batch=50_000, max_body_bytes=8 * 1024 * 1024).start()
    yield svc
    svc.cleanup()


def count(db_url):
    return sql(db_url, "SELECT count(*) FROM tasks")[0][0]


def post(service, path, body=None, token=TOKEN, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(service.url + path, json=body, headers=headers, timeout=30, **kw)


SUBMIT = {"exp_id": "svc", "task_type": 1, "payloads": ["a"]}


@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x", TOKEN[:-1]])
def test_bad_or_missing_tokens_get_401_and_nothing_runs(service, db_url, token):
    response = post(service, "/v1/tasks", SUBMIT, token=token)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "AuthError"
    assert response.headers["www-authenticate"] == "Bearer"
    assert count(db_url) == 0
    with pytest.raises(AuthError):
        ServiceTaskQueue(service.url, token or "nope").submit("svc", 1, "a")


def test_other_auth_schemes_get_401(service, db_url):
    response = httpx.post(service.url + "/v1/tasks", json=SUBMIT, headers={"Authorization": f"Basic {TOKEN}"})
    assert response.status_code == 401 and count(db_url) == 0


def test_rotated_tokens(db_url):
    svc = ServiceProcess(db_url, tokens=["new-token", "next-token"]).start()
    try:
        assert post(svc, "/v1/tasks", SUBMIT, token=TOKEN).status_code == 401  # the retired token
        assert post(svc, "/v1/tasks", SUBMIT, token="new-token").status_code == 200
        assert post(svc, "/v1/tasks", SUBMIT, token="next-token").status_code == 200
        assert count(db_url) == 2
    finally:
        svc.cleanup()


def test_malformed_and_mistyped_bodies_get_422_with_a_message(service, db_url):
    raw = httpx.post(service.url + "/v1/tasks", content=b"{not json", timeout=10,
                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert raw.status_code == 422 and raw.json()["error"]["type"] == "InvalidInput"
    for body, needle in [({**SUBMIT, "payloads": [1]}, "payloads.0"),
                         ({**SUBMIT, "task_type": "1"}, "task_type"),
                         ({**SUBMIT, "unexpected": 1}, "unexpected"),
                         ({**SUBMIT, "exp_id": ""}, "exp_id")]:
        response = post(service, "/v1/tasks", body)
        assert response.status_code == 422, body
        assert needle in response.json()["error"]["message"]
    assert count(db_url) == 0


def test_unknown_ids_get_404_and_change_nothing(service, db_url):
    ids = post(service, "/v1/tasks", {**SUBMIT, "payloads": ["a", "b"]}).json()["task_ids"]
    response = post(service, "/v1/tasks/cancel", {"task_ids": ids + [99999999]})
    assert response.status_code == 404
    assert response.json()["error"] == {"type": "UnknownTask", "message": "unknown task id(s): 99999999",
                                        "task_ids": [99999999]}
    assert sql(db_url, "SELECT DISTINCT status::text FROM tasks") == [("queued",)]


def test_oversized_bodies_and_batches_get_413(service, db_url):
    big = post(service, "/v1/tasks", {**SUBMIT, "payloads": ["x" * (9 * 1024 * 1024)]})
    assert big.status_code == 413 and big.json()["error"]["type"] == "PayloadTooLarge"
    batch = post(service, "/v1/tasks", {**SUBMIT, "payloads": ["x"] * 100_000})
    assert batch.status_code == 413
    assert "batch of 100000 is over the service's limit of 50000" in batch.json()["error"]["message"]
    chunked = httpx.post(service.url + "/v1/tasks", timeout=30,
                         headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
                         content=iter([b'{"exp_id": "svc", "task_type": 1, "payloads": ["', b"y" * (9 * 1024 * 1024),
                                       b'"]}']))
    assert chunked.status_code == 413
    assert count(db_url) == 0


def test_health_status_page_and_openapi(service):
    assert httpx.get(service.url + "/health").json()["status"] == "ok"
    page = httpx.get(service.url + "/")
    assert page.status_code == 200 and "eqflow service" in page.text
    spec = httpx.get(service.url + "/openapi.json").json()
    assert "/v1/tasks" in spec["paths"] and "/v1/tasks/completions" in spec["paths"]


def test_service_restart_mid_run_loses_and_repeats_nothing(service, db_url):
    client = ServiceTaskQueue(service.url, TOKEN, retry_timeout=60)
    worker_q = LocalTaskQueue(db_url, migrate=False)
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            tasks = worker_q.claim(1, n=10, pool="w", timeout=0.5)
            time.sleep(0.002 * len(tasks))
            worker_q.report([(t, t.payload) for t in tasks])

    thread = threading.Thread(target=worker)
    thread.start()
    futures = []
    for i in range(10):
        futures += client.submit_many("restart", 1, [f"{i}-{j}" for j in range(20)])
        if i == 4:
            service.stop()
            threading.Timer(1.0, service.start).start()
    results = [f.result() for f in as_completed(futures, timeout=120)]
    stop.set()
    thread.join()
    worker_q.close()
    client.close()
    assert sorted(results) == sorted(f"{i}-{j}" for i in range(10) for j in range(20))
    assert count(db_url) == 200  # nothing submitted twice


def test_submit_retry_with_the_same_key_is_not_repeated(service, db_url):
    body = {**SUBMIT, "payloads": ["a", "b"], "idempotency_key": "retry-1"}
    first = post(service, "/v1/tasks", body).json()
    second = post(service, "/v1/tasks", body).json()
    assert first == second and count(db_url) == 2


@pytest.fixture(scope="module")
def sshd():
    why = sshd_missing()
    if why:
        pytest.skip(why)
    server = SSHServer().start()
    yield server
    server.stop()


def test_service_through_a_real_ssh_tunnel(service, sshd, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(f"Host emews-login\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
                      f"  IdentityFile {sshd.client_key}\n")
    tunnel = SSHTunnel("emews-login", remote_port=service.port, ssh_config=str(config),
                       known_hosts=str(sshd.known_hosts))
    client = ServiceTaskQueue(token=TOKEN, tunnel=tunnel)
    try:
        assert client.url != service.url and str(tunnel.local_port) in client.url
        fut = client.submit("tunnel", 1, "through ssh")
        [task] = client.claim(1, pool="remote")
        client.report([(task, "ok")])
        assert fut.result(timeout=10) == "ok"
        tunnel.drop()  # the SSH connection dies: the next call reconnects
        assert client.stats("tunnel") == {1: {"complete": 1}}
        assert tunnel.reconnects == 1
    finally:
        client.close()


def test_unknown_ssh_host_key_is_refused(service, sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    tunnel = SSHTunnel("127.0.0.1", remote_port=service.port, port=sshd.port, user="root",
                       key_filename=str(sshd.client_key), known_hosts=str(empty))
    with pytest.raises(TunnelError, match="not found in known_hosts|Server"):
        tunnel.start()


# -- property-based: no input makes the service answer 5xx ---------------------------------------------
def _fuzz(operation, failures, examples=25):
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy())
    def check(case):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
        if isinstance(case.body, dict) and "timeout" in case.body:
            case.body["timeout"] = 0  # long-polls would only slow the search down
        response = case.call()
        if response.status_code >= 500:
            failures.append((operation.label, response.status_code, response.text[:300]))

    check()


def test_schemathesis_finds_no_server_errors(db_url):
    import schemathesis

    from eqflow.service.app import create_app
    from eqflow.service.config import ServiceConfig

    app = create_app(ServiceConfig(db_url=db_url, tokens=[TOKEN], max_batch=1000, max_body_bytes=1024 * 1024))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[tuple[str, int, str]] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 17
    for operation in operations:
        _fuzz(operation, failures)
    assert failures == []
