"""The completions stream (POST /v1/tasks/completions/stream) and the ServiceTaskQueue watch
that reads it, against a real uvicorn process and a real PostgreSQL: what finishes arrives as it
finishes and once, the stream ends when everything was sent, at its timeout, or when its client
goes, and as_completed carries on through a service restart and against an older service."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

import eqflow.service_queue as service_queue
from eqflow import as_completed
from eqflow.queue import LocalTaskQueue
from eqflow.service_queue import ServiceTaskQueue, StreamingCompletionWatch
from tests.service_fixtures import TOKEN, ServiceProcess

AUTH = {"Authorization": f"Bearer {TOKEN}"}
STREAM = "/v1/tasks/completions/stream"


def long_polls(service: ServiceProcess) -> int:
    return int(httpx.get(service.url + "/health", headers=AUTH).json()["long_polls"])


def wait_until_no_long_polls(service: ServiceProcess, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while long_polls(service):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def finish(queue: LocalTaskQueue, task_type: int, result: str) -> int:
    [task] = queue.claim(task_type, pool="t")
    assert queue.report([(task, result)]) == {task.task_id}
    return task.task_id


def test_the_stream_sends_each_finished_task_once_as_it_finishes(service: ServiceProcess, db_url: str) -> None:
    queue = LocalTaskQueue(db_url, migrate=False)
    try:
        ids = [f.task_id for f in queue.submit_many("st", 5, ["a", "b", "c"])]
        first = finish(queue, 5, "r-first")  # finished before the stream opens: in its first line
        started = time.monotonic()
        with httpx.Client(base_url=service.url, headers=AUTH, timeout=30) as client, \
                client.stream("POST", STREAM, json={"task_ids": ids, "exp_ids": ["st"], "timeout": 20}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/x-ndjson")
            lines = response.iter_lines()
            seen = [json.loads(next(lines))["finished"]]
            assert seen[0] == [[first, "complete", "r-first", None, "t"]]
            assert long_polls(service) == 1
            second = finish(queue, 5, "r-second")
            seen.append(json.loads(next(lines))["finished"])  # arrives while the stream is open
            assert [r[:3] for r in seen[1]] == [[second, "complete", "r-second"]]
            queue.cancel([i for i in ids if i not in (first, second)])
            seen.append(json.loads(next(lines))["finished"])
            assert [r[1] for r in seen[2]] == ["canceled"]
            assert list(lines) == []  # every id was sent: the stream ends
        assert time.monotonic() - started < 15  # long before its 20 s
        assert sorted(r[0] for rows in seen for r in rows) == sorted(ids)
        wait_until_no_long_polls(service, 5, "the finished stream still counts as waiting")
    finally:
        queue.close()


def test_the_stream_ends_at_its_timeout_and_refuses_bad_input(service: ServiceProcess) -> None:
    started = time.monotonic()
    response = httpx.post(service.url + STREAM, headers=AUTH, timeout=10,
                          json={"task_ids": [424242], "exp_ids": ["nobody"], "timeout": 1})
    assert response.status_code == 200 and response.text == ""
    assert 0.9 <= time.monotonic() - started < 5
    for body in ({"task_ids": [-1]}, {"task_ids": [2**63]}, {"task_ids": ["1"]}, {"task_ids": [1], "timeout": -1},
                 {"task_ids": [1], "extra": 1}):
        bad = httpx.post(service.url + STREAM, headers=AUTH, timeout=10, json=body)
        assert bad.status_code == 422 and bad.json()["error"]["type"] == "InvalidInput", body
    assert httpx.post(service.url + STREAM, timeout=10, json={"task_ids": [1]}).status_code == 401
    assert long_polls(service) == 0


def test_a_stream_whose_client_left_ends(service: ServiceProcess, db_url: str) -> None:
    queue = LocalTaskQueue(db_url, migrate=False)
    try:
        ids = [f.task_id for f in queue.submit_many("gone", 6, ["x"])]
        client = httpx.Client(base_url=service.url, headers=AUTH, timeout=30)
        response = client.send(client.build_request("POST", STREAM, json={"task_ids": ids, "timeout": 20}),
                               stream=True)
        assert response.status_code == 200 and long_polls(service) == 1
        client.close()  # the ME went away mid-stream
        wait_until_no_long_polls(service, 10, "the stream of a gone client lingers")
    finally:
        queue.close()


def test_an_as_completed_that_stops_early_closes_its_stream(service: ServiceProcess, db_url: str) -> None:
    stq = ServiceTaskQueue(service.url, TOKEN, retry_timeout=10)
    queue = LocalTaskQueue(db_url, migrate=False)
    try:
        futures = stq.submit_many("early", 4, ["a", "b"])
        finish(queue, 4, "r")
        for _ in range(3):  # pop_completed in a loop would leave a stream behind on each call
            [fut] = list(as_completed(futures, n=1, timeout=10))
            assert fut.result() == "r"
        wait_until_no_long_polls(service, 5, "streams of finished as_completed calls linger")
    finally:
        queue.close()
        stq.close()


def _slow_worker(db_url: str, task_type: int, stop: threading.Event, per_task_s: float = 0.01) -> threading.Thread:
    def work() -> None:
        queue = LocalTaskQueue(db_url, migrate=False)
        try:
            while not stop.is_set():
                tasks = queue.claim(task_type, n=5, pool="w", timeout=0.2)
                time.sleep(per_task_s * len(tasks))
                queue.report([(t, "done:" + t.payload) for t in tasks])
        finally:
            queue.close()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_as_completed_streams_on_through_a_service_crash(service: ServiceProcess, db_url: str) -> None:
    stq = ServiceTaskQueue(service.url, TOKEN, retry_timeout=60)
    stop = threading.Event()
    futures = stq.submit_many("crash-stream", 7, [str(i) for i in range(150)])
    assert isinstance(stq.watch_completions({"crash-stream"}), StreamingCompletionWatch)
    worker = _slow_worker(db_url, 7, stop, per_task_s=0.02)
    got: list[int] = []
    seen_when_back: list[int] = []

    def crash_and_restart() -> None:
        assert service.proc is not None
        service.proc.kill()  # mid-stream, without a goodbye
        service.proc.wait()
        time.sleep(1.0)
        service.start()
        seen_when_back.append(len(got))

    restart = threading.Thread(target=crash_and_restart)
    try:
        for fut in as_completed(futures, timeout=120):
            got.append(fut.task_id)
            if len(got) == 30:
                restart.start()
    finally:
        stop.set()
        worker.join()
        stq.close()
        if restart.ident is not None:
            restart.join()
    assert seen_when_back and seen_when_back[0] < 150  # the rest came through a stream opened after it
    assert sorted(got) == sorted(f.task_id for f in futures)
    assert sorted(f.result() for f in futures) == sorted(f"done:{i}" for i in range(150))


def test_a_stopping_service_cuts_its_streams_after_a_grace(service: ServiceProcess) -> None:
    client = httpx.Client(base_url=service.url, headers=AUTH, timeout=30)
    response = client.send(client.build_request("POST", STREAM, json={"task_ids": [31337], "timeout": 25}),
                           stream=True)
    assert response.status_code == 200
    started = time.monotonic()
    service.stop()  # SIGTERM: waits for what is in flight, then cuts the stream
    assert time.monotonic() - started < 8
    with pytest.raises(httpx.HTTPError):
        response.read()
    client.close()


def test_an_older_service_without_the_stream_is_long_polled(service: ServiceProcess, db_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_queue, "COMPLETIONS_STREAM", "/v1/tasks/completions/not-here")  # answers 404
    stq = ServiceTaskQueue(service.url, TOKEN, retry_timeout=10)
    stop = threading.Event()
    futures = stq.submit_many("old-service", 8, [str(i) for i in range(20)])
    worker = _slow_worker(db_url, 8, stop)
    try:
        assert sorted(f.result() for f in as_completed(futures, timeout=60)) == sorted(f"done:{i}" for i in range(20))
        assert stq._no_stream  # and later watches poll from the start
    finally:
        stop.set()
        worker.join()
        stq.close()


def test_a_stream_takes_more_ids_than_one_batch(db_url: str) -> None:
    svc = ServiceProcess(db_url, max_batch=100).start()
    stq = ServiceTaskQueue(svc.url, TOKEN, retry_timeout=10)
    stop = threading.Event()
    try:
        futures = []
        for start in range(0, 250, 100):
            futures += stq.submit_many("wide", 9, [str(i) for i in range(start, min(start + 100, 250))])
        worker = _slow_worker(db_url, 9, stop)
        try:
            assert len(list(as_completed(futures, timeout=60))) == 250
        finally:
            stop.set()
            worker.join()
    finally:
        stq.close()
        svc.cleanup()
