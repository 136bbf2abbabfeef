"""The hot routes (submit, report, report-claim, fail, release, heartbeat, query, priorities,
cancel) are answered by the service's Guard, not by FastAPI's routing: against a real uvicorn
process, each answers as its FastAPI route does. A body declared as another JSON type
(application/merge-patch+json) is not taken by the Guard, so FastAPI's answer to the same body
is at hand for comparison. Also the client side: ServiceTaskQueue's urllib3 requests."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from eqflow.queue import LocalTaskQueue
from eqflow.service.app import HOT_ROUTES, build_app
from eqflow.service.config import ServiceConfig
from eqflow.service_queue import ServiceTaskQueue
from tests.service_fixtures import TOKEN, ServiceProcess

AUTH = {"Authorization": f"Bearer {TOKEN}"}
GUARD = {**AUTH, "Content-Type": "application/json"}
FASTAPI = {**AUTH, "Content-Type": "application/merge-patch+json"}  # JSON to FastAPI, not taken by the Guard

SUBMIT = '{"exp_id": "hot", "task_type": 7, "payloads": ["a"]}'
BODIES: list[tuple[str, str]] = [
    ("/v1/tasks", SUBMIT),
    ("/v1/tasks", '{"exp_id": "hot", "task_type": "7", "payloads": [1]}'),  # wrong types
    ("/v1/tasks", '{"exp_id": "hot", "task_type": 7, "payloads": ["a"], "extra": 1}'),
    ("/v1/tasks", '{"exp_id": "hot", "task_type": 7, "payloads": ["a"], "max_attempts": 0}'),  # eqflow's check
    ("/v1/tasks", '{"exp_id": "hot", "task_type": 7, "payloads": ["a"], "priority": [1, 2]}'),
    ("/v1/tasks", '{"exp_id": "hot", "task_type": 7}'),  # a field missing
    ("/v1/tasks/report", '{"results": [{"task_id": 1, "claim_id": 2, "result": "x"}]}'),
    ("/v1/tasks/report", '{"results": [{"task_id": 1, "result": "x"}]}'),
    ("/v1/tasks/report-claim", '{"results": [], "task_types": [7], "n": 0}'),
    ("/v1/tasks/report-claim", '{"results": [], "task_types": [7], "n": -1}'),
    ("/v1/tasks/fail", '{"failures": [{"task_id": 1, "claim_id": 2, "error": "e"}], "retry": "yes"}'),
    ("/v1/tasks/release", '{"tasks": [{"task_id": 1, "claim_id": 2}]}'),
    ("/v1/tasks/heartbeat", '{"tasks": [], "lease_s": 0}'),
    ("/v1/tasks/query", '{"task_ids": [424242]}'),
    ("/v1/tasks/priorities", '{"task_ids": [424242], "priority": 3}'),  # unknown id: 404
    ("/v1/tasks/cancel", '{"task_ids": [424242]}'),
    ("/v1/tasks/cancel", '{"task_ids": [1e999]}'),
]


def _shape(response: httpx.Response) -> tuple[int, Any]:
    """What must agree: the status, and the error (type and message) or the answer's keys."""
    body = response.json()
    if "error" in body:
        return response.status_code, body["error"]
    return response.status_code, sorted(body)


@pytest.mark.parametrize(("path", "body"), BODIES, ids=[f"{p}:{i}" for i, (p, _) in enumerate(BODIES)])
def test_a_hot_route_answers_as_its_fastapi_route(service: ServiceProcess, path: str, body: str) -> None:
    with httpx.Client(base_url=service.url, timeout=30) as client:
        guard = client.post(path, content=body, headers=GUARD)
        fastapi = client.post(path, content=body, headers=FASTAPI)
    assert _shape(guard) == _shape(fastapi), (guard.text, fastapi.text)
    assert guard.headers["content-type"] == "application/json"


def test_bad_json_is_refused_with_what_is_wrong_and_nothing_is_written(service: ServiceProcess, db_url: str) -> None:
    queue = LocalTaskQueue(db_url, migrate=False)
    try:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            for body in ("{bad", "", '{"exp_id": "hot", "task_type": 7, "payloads": ["a"]'):
                response = client.post("/v1/tasks", content=body, headers=GUARD)
                assert response.status_code == 422
                error = response.json()["error"]
                assert error["type"] == "InvalidInput" and "Invalid JSON" in error["message"], error
            # no token: refused before the body is read, as for every /v1 route
            assert client.post("/v1/tasks", content=SUBMIT, headers={"Content-Type": "application/json"}
                               ).status_code == 401
        assert queue.stats("hot") == {}
    finally:
        queue.close()


def test_every_hot_route_is_a_documented_post_route(db_url: str) -> None:
    """The Guard serves them; FastAPI still declares them (with the same body model) for the schema."""
    app = build_app(ServiceConfig(db_url=db_url, tokens=[TOKEN]))
    schema = app.openapi()
    for path, (model, _) in HOT_ROUTES.items():
        operation = schema["paths"][path]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/" + model.__name__), (path, ref)


def test_the_client_round_trip_through_the_hot_routes(service: ServiceProcess) -> None:
    """ServiceTaskQueue (urllib3) through the Guard's routes and FastAPI's: GET query parameters
    (a boolean among them), errors raised as eqflow errors, a result with any character."""
    q = ServiceTaskQueue(service.url, TOKEN, retry_timeout=5.0)
    try:
        [future] = q.submit_many("hot-client", 8, ["p\u00e9\u2603\n\"x\""], priority=4)
        assert q.open_count(8) == 1
        [task] = q.claim(8, pool="hc")
        assert task.payload == "p\u00e9\u2603\n\"x\"" and task.priority == 4
        assert q.report([(task, "r\u00e9sultat")]) == {task.task_id}
        assert future.result(timeout=10) == "r\u00e9sultat"
        assert isinstance(q.pools(active_only=False), list)
        with pytest.raises(Exception, match="unknown task"):
            q.cancel([987654321])
    finally:
        q.close()
