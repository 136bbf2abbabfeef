"""Issue #14, items 4-6: exp_ids with routing characters, lone surrogates and NaN/inf numbers.

Every bad argument is refused with InvalidInput (HTTP 422 through the service) naming the
argument, before anything is written; any exp_id keeps working for notifications and re-attach.
The property tests at the end feed arbitrary text and numbers through LocalTaskQueue and
ServiceTaskQueue (against a real uvicorn service) and check that nothing else ever happens.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eqflow import InvalidInput, LocalTaskQueue, UnknownTask, as_completed
from eqflow.notify import done_ids, done_key
from eqflow.service_queue import ServiceTaskQueue
from tests.conftest import sql
from tests.service_fixtures import TOKEN, ServiceProcess

AUTH = {"Authorization": f"Bearer {TOKEN}"}
TABLES = ("tasks", "experiments", "submissions", "experiment_events")


def counts(url: str) -> tuple[Any, ...]:
    return sql(url, "SELECT " + ", ".join(f"(SELECT count(*) FROM {t})" for t in TABLES))[0]


@pytest.fixture()
def stq(service: ServiceProcess) -> Iterator[ServiceTaskQueue]:
    q = ServiceTaskQueue(service.url, TOKEN, retry_timeout=5.0)
    yield q
    q.close()


# -- item 4: exp_ids that contain routing characters ---------------------------------------------

ROUTING_IDS = ["a|b", "a|b|c", "|", "a#b", "a?b=1&c=2", "a/b", "x/../y", "..", ".", "a%20b", "a%2Fb",
               "a b", "a+b", "100%", "é|ü", "\U0001f600/?#"]


def test_done_payload_is_split_at_the_last_bar() -> None:
    assert done_ids(["a|b|1,2", "|3", "plain|4,5"]) == {1, 2, 3, 4, 5}
    assert done_key("a|b|1,2") == "a|b" and done_key("|3") == "" and done_key("plain|4") == "plain"


def _complete(q: LocalTaskQueue, task_type: int) -> None:
    for task in q.claim(task_type, n=10, pool="p", timeout=5):
        q.report([(task, "done:" + task.payload)])


def test_waiters_on_exp_ids_with_a_bar_are_woken_and_do_not_crash(db_url: str) -> None:
    # safety_poll_s is far beyond the timeouts: only a correctly routed notification wakes a waiter.
    with LocalTaskQueue(db_url, migrate=False, safety_poll_s=60.0) as q:
        plain = q.submit("a", 1, "plain")
        barred = q.submit("a|b", 2, "barred")
        box: dict[str, Any] = {}

        def wait_plain() -> None:
            try:
                box["plain"] = [f.result() for f in as_completed([plain], timeout=15)]
            except Exception as exc:  # noqa: BLE001 - the test reports whatever escaped
                box["plain"] = exc

        waiter = threading.Thread(target=wait_plain)
        waiter.start()
        time.sleep(0.5)  # the waiter on "a" is listening when "a|b" finishes
        _complete(q, 2)
        time.sleep(0.3)
        _complete(q, 1)
        waiter.join(20)
        assert box["plain"] == ["done:plain"]

        started = time.monotonic()
        late = q.submit("a|b", 3, "late")
        threading.Timer(0.5, _complete, (q, 3)).start()
        assert late.result(timeout=10) == "done:late"
        assert barred.result(timeout=1) == "done:barred"
        assert time.monotonic() - started < 10


def test_experiment_futures_with_reserved_url_characters(db_url: str, stq: ServiceTaskQueue,
                                                          service: ServiceProcess) -> None:
    ids = {exp: stq.submit(exp, 1, exp).task_id for exp in ROUTING_IDS + ["a", "b", "y", "x"]}
    for exp in ROUTING_IDS:
        futures = stq.experiment_futures(exp)
        assert [(f.task_id, f.exp_id) for f in futures] == [(ids[exp], exp)], exp
    # the query-parameter route directly, and the old path route for a plain id
    got = httpx.get(service.url + "/v1/experiments/tasks", params={"exp_id": "a#b"}, headers=AUTH)
    assert [t["task_id"] for t in got.json()["tasks"]] == [ids["a#b"]]
    old = httpx.get(service.url + "/v1/experiments/a/tasks", headers=AUTH)
    assert [t["task_id"] for t in old.json()["tasks"]] == [ids["a"]]


def test_service_completions_for_exp_ids_with_routing_characters(stq: ServiceTaskQueue, db_url: str) -> None:
    with LocalTaskQueue(db_url, migrate=False) as local:
        futs = stq.submit_many("a|b", 7, ["x", "y"])
        started = time.monotonic()
        threading.Timer(0.3, _complete, (local, 7)).start()
        assert sorted(f.result() for f in as_completed(futs, timeout=10)) == ["done:x", "done:y"]
        # woken by the notification, not by the service's 5 s safety poll
        assert time.monotonic() - started < 3.5


# -- item 5: lone surrogates and over-long keys write nothing -------------------------------------

SURROGATE = "\ud800"

LOCAL_CALLS: dict[str, Any] = {
    "payload": lambda q: q.submit("exp", 1, "ok\ud800"),
    "exp_id": lambda q: q.submit("exp\ud800", 1, "p"),
    "tag": lambda q: q.submit("exp", 1, "p", tag="t\ud800"),
    "idempotency_key": lambda q: q.submit_many("exp", 1, ["p"], idempotency_key="k\ud800"),
    "pool": lambda q: q.claim(1, pool="pool\ud800"),
    "result": lambda q: q.report([(q.claim(9, timeout=5)[0], "r\ud800")]),
    "error": lambda q: q.report_failure([(q.claim(9, timeout=5)[0], "e\ud800")]),
    "status": lambda q: q.set_experiment_status("exp", "s\ud800"),
    "event kind": lambda q: q.record_event("exp", "k\ud800"),
    "event data": lambda q: q.record_event("exp", "k", {"v": "\ud800"}),
}


@pytest.mark.parametrize("name", list(LOCAL_CALLS))
def test_lone_surrogates_are_refused_locally(queue: LocalTaskQueue, db_url: str, name: str) -> None:
    queue.submit("setup", 9, "to claim")
    before = counts(db_url)
    with pytest.raises(InvalidInput, match=name):
        LOCAL_CALLS[name](queue)
    assert counts(db_url) == before


@pytest.mark.parametrize("name", list(LOCAL_CALLS))
def test_lone_surrogates_are_refused_through_the_service(stq: ServiceTaskQueue, db_url: str, name: str) -> None:
    stq.submit("setup", 9, "to claim")
    before = counts(db_url)
    with pytest.raises(InvalidInput, match=name):
        LOCAL_CALLS[name](stq)
    assert counts(db_url) == before


@pytest.mark.parametrize("field", ["exp_id", "payloads", "tag", "idempotency_key"])
def test_service_answers_422_to_a_raw_body_with_a_lone_surrogate(service: ServiceProcess, db_url: str,
                                                                   field: str) -> None:
    body: dict[str, Any] = {"exp_id": "exp", "task_type": 1, "payloads": ["p"], "tag": "t", "idempotency_key": "k"}
    body[field] = [SURROGATE] if field == "payloads" else SURROGATE
    response = httpx.post(service.url + "/v1/tasks", content=json.dumps(body), headers=AUTH)  # \ud800 escape
    assert response.status_code == 422, response.text
    assert counts(db_url) == (0, 0, 0, 0)


def test_over_long_or_empty_idempotency_key_writes_nothing(queue: LocalTaskQueue, db_url: str) -> None:
    for key in ("k" * 201, ""):
        with pytest.raises(InvalidInput, match="idempotency_key"):
            queue.submit_many("fresh-exp", 1, ["p"], idempotency_key=key)
    assert counts(db_url) == (0, 0, 0, 0)


def test_create_experiment_config_is_checked(queue: LocalTaskQueue, db_url: str) -> None:
    for config in ({"x": math.nan}, {"x": "\ud800"}, {"x": "\x00"}, {"\ud800": 1}, "not a dict"):
        with pytest.raises(InvalidInput, match="config"):
            queue.create_experiment("exp", config)  # type: ignore[arg-type]
    assert counts(db_url) == (0, 0, 0, 0)


def test_nul_escapes_in_event_data_are_refused_but_backslashes_pass(queue: LocalTaskQueue) -> None:
    with pytest.raises(InvalidInput, match="event data"):
        queue.record_event("exp", "k", {"v": "a\x00b"})
    queue.record_event("exp", "k", {"v": "\\u0000 is text here", "w": "\\\\u0000"})
    assert [e.data["v"] for e in queue.events("exp")] == ["\\u0000 is text here"]


# -- item 6: NaN, inf and out-of-range numbers -----------------------------------------------------

BAD_TIMEOUTS = [math.nan, -1, -math.inf, "1", True]
BAD_LEASES = [math.nan, math.inf, -math.inf, 0, -5, 10**12, "60", True]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS)
def test_bad_timeouts_are_refused_at_once(queue: LocalTaskQueue, timeout: Any) -> None:
    fut = queue.submit("exp", 1, "p")
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="timeout"):
        queue.claim(2, timeout=timeout)
    with pytest.raises(InvalidInput, match="timeout"):
        list(as_completed([fut], timeout=timeout))
    with pytest.raises(InvalidInput, match="timeout"):
        fut.result(timeout=timeout)
    with pytest.raises(InvalidInput, match="timeout"):
        queue.pop_completed([fut], timeout=timeout)
    with pytest.raises(InvalidInput, match="timeout"):
        queue.wait_finished([fut.task_id], {"exp"}, timeout)
    assert time.monotonic() - started < 2


def test_infinite_timeout_means_no_limit(queue: LocalTaskQueue) -> None:
    fut = queue.submit("exp", 1, "p")
    threading.Timer(0.3, _complete, (queue, 1)).start()
    assert fut.result(timeout=math.inf) == "done:p"
    assert queue.claim(1, timeout=0.0) == []


@pytest.mark.parametrize("lease", BAD_LEASES)
def test_bad_leases_are_refused(queue: LocalTaskQueue, db_url: str, lease: Any) -> None:
    queue.submit("exp", 1, "p")
    with pytest.raises(InvalidInput, match="lease_s"):
        queue.claim(1, lease_s=lease)
    [task] = queue.claim(1)
    with pytest.raises(InvalidInput, match="lease_s"):
        queue.extend_leases([task], lease_s=lease)
    with pytest.raises(InvalidInput, match="lease_s"):
        LocalTaskQueue(db_url, migrate=False, lease_s=lease)


@pytest.mark.parametrize(("arg", "value"), [
    *[("safety_poll_s", v) for v in (math.nan, math.inf, 0, -1, "5", None)],
    *[("reconnect_timeout", v) for v in (math.nan, -math.inf, -1, "5")],
    *[("pool_size", v) for v in (0, 1.5, None)], ("max_payload_bytes", math.nan), ("max_attempts", math.inf)])
def test_bad_constructor_numbers(db_url: str, arg: str, value: Any) -> None:
    with pytest.raises(InvalidInput, match=arg):
        LocalTaskQueue(db_url, migrate=False, **{arg: value})


def test_stop_pools_with_a_bogus_mode(queue: LocalTaskQueue, stq: ServiceTaskQueue) -> None:
    for q in (queue, stq):
        with pytest.raises(InvalidInput, match="mode"):
            q.stop_pools(1, "bogus")


def test_pool_ids_are_checked(queue: LocalTaskQueue) -> None:
    for bad in (2**63, -1, "1", 1.5):
        with pytest.raises(InvalidInput, match="pool_id"):
            queue.pool_heartbeat(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="pool_id"):
            queue.pool_stopped(bad)  # type: ignore[arg-type]


def test_claimed_tasks_are_checked_on_both_transports(queue: LocalTaskQueue, stq: ServiceTaskQueue) -> None:
    from eqflow.models import ClaimedTask

    forged = ClaimedTask(2**64, "exp", 1, 0, "p", None, 1, 1, "pool")
    for q in (queue, stq):
        with pytest.raises(InvalidInput, match="report takes ClaimedTasks"):
            q.report([(7, "r")])  # type: ignore[list-item]
        with pytest.raises(InvalidInput, match="task_id"):
            q.report_failure([(forged, "e")])
        with pytest.raises(InvalidInput, match="task_id"):
            q.extend_leases([forged])
        with pytest.raises(InvalidInput, match="retry"):
            q.report_failure([], retry="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, math.inf, 2**40, 1.5, "3"])
def test_service_numbers_are_checked_before_sending(stq: ServiceTaskQueue, db_url: str, value: Any) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidInput, match="priority"):
        stq.submit("exp", 1, "p", priority=value)
    with pytest.raises(InvalidInput, match="max_attempts"):
        stq.submit("exp", 1, "p", max_attempts=value)
    fut = stq.submit("exp", 1, "p")
    with pytest.raises(InvalidInput, match="priority"):
        stq.set_priorities([fut], value)
    bad_timeout = value if isinstance(value, str) else -value if value == math.inf else math.nan
    with pytest.raises(InvalidInput, match="timeout"):
        stq.claim(2, timeout=bad_timeout)  # NaN: a busy loop of claims before the fix
    with pytest.raises(InvalidInput, match="timeout"):
        fut.result(timeout=bad_timeout)
    with pytest.raises(InvalidInput, match="lease_s"):
        stq.claim(1, lease_s=value if value != 1.5 else math.nan)
    assert time.monotonic() - started < 5
    assert counts(db_url)[0] == 1


@pytest.mark.parametrize("body", [
    b'{"task_types": [1], "timeout": NaN}', b'{"task_types": [1], "lease_s": NaN}',
    b'{"task_types": [1], "lease_s": Infinity}', b'{"task_types": [1], "lease_s": 1e300}'])
def test_service_claim_with_nan_or_inf_in_the_body_is_422(service: ServiceProcess, db_url: str,
                                                           body: bytes) -> None:
    with LocalTaskQueue(db_url, migrate=False) as local:
        local.submit("exp", 1, "p")
    response = httpx.post(service.url + "/v1/tasks/claim", content=body, headers=AUTH, timeout=10)
    assert response.status_code == 422, response.text
    assert sql(db_url, "SELECT status::text FROM tasks") == [("queued",)]


# -- property tests: arbitrary text and numbers through both transports ---------------------------

NASTY = ["\ud800", "\udfff", "a\ud83dz", "\x00", "a\x00", "", " ", "a|b", "a#b?c/d", "%2F", "..", "x" * 201,
         "é" * 120, "\U0001f600" * 60, "k" * 70_000]
texts = st.one_of(
    st.text(st.one_of(st.characters(), st.characters(categories=["Cs"]), st.sampled_from("|#?/%\x00")),
            max_size=30),
    st.sampled_from(NASTY))
numbers = st.one_of(st.integers(-(2**70), 2**70), st.integers(-3, 3), st.floats(), st.booleans(), st.none(),
                     st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 2**31, 2**63, "1"]))
short_timeouts = st.one_of(st.floats(max_value=0.02), st.sampled_from([math.nan, -1, "0", True]))
ids = st.one_of(st.integers(-5, 10**6), st.sampled_from([2**63, -(2**63), 2**100, 1.0, "1", None]))
json_values = st.recursive(st.one_of(st.none(), st.booleans(), numbers, texts),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                           max_leaves=6)


def _op(draw: Any) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(["submit", "claim", "priorities", "cancel", "info", "stats", "open_count",
                                 "reattach", "as_completed", "event", "events", "status", "stop", "leases",
                                 "report"]))
    args: dict[str, Any] = {}
    if name == "submit":
        args = {"exp_id": draw(texts), "task_type": draw(numbers), "payloads": draw(st.lists(texts, max_size=3)),
                "priority": draw(numbers | st.lists(numbers, max_size=3)),
                "tag": draw(st.none() | texts | st.lists(st.none() | texts, max_size=3)),
                "max_attempts": draw(numbers), "idempotency_key": draw(st.none() | texts)}
    elif name == "claim":
        args = {"task_types": draw(numbers | st.lists(numbers, max_size=2)), "n": draw(numbers),
                "pool": draw(texts), "timeout": draw(short_timeouts), "lease_s": draw(numbers)}
    elif name in ("priorities", "cancel", "info"):
        args = {"ids": draw(st.lists(ids, max_size=3)), "priority": draw(numbers | st.lists(numbers, max_size=3))}
    elif name in ("stats", "reattach", "events", "status", "event"):
        args = {"exp_id": draw(texts), "kind": draw(texts), "data": draw(st.none() | json_values)}
    elif name == "open_count":
        args = {"task_type": draw(numbers)}
    elif name in ("as_completed", "leases"):
        args = {"timeout": draw(numbers), "n": draw(numbers), "batch_size": draw(numbers)}
    elif name == "stop":
        args = {"task_type": draw(numbers), "mode": draw(texts | st.sampled_from(["drain", "now"]))}
    elif name == "report":
        args = {"result": draw(texts), "error": draw(texts), "retry": draw(st.booleans() | numbers)}
    return name, args


operations = st.composite(_op)()


def _report(q: Any, a: dict[str, Any], held: list[Any]) -> None:
    if a["retry"] is True or a["retry"] is False:
        q.report_failure([(t, a["error"]) for t in held], retry=a["retry"])
    else:
        q.report([(t, a["result"]) for t in held])


RUN: dict[str, Any] = {
    "submit": lambda q, a, _: q.submit_many(a["exp_id"], a["task_type"], a["payloads"], a["priority"], a["tag"],
                                            a["max_attempts"], a["idempotency_key"]),
    "claim": lambda q, a, _: q.claim(a["task_types"], n=a["n"], pool=a["pool"], timeout=a["timeout"],
                                     lease_s=a["lease_s"]),
    "priorities": lambda q, a, _: q.set_priorities(a["ids"], a["priority"]),
    "cancel": lambda q, a, _: q.cancel(a["ids"]),
    "info": lambda q, a, _: q.info(a["ids"]),
    "stats": lambda q, a, _: q.stats(a["exp_id"]),
    "open_count": lambda q, a, _: q.open_count(a["task_type"]),
    "reattach": lambda q, a, _: q.experiment_futures(a["exp_id"]),
    "as_completed": lambda q, a, futs: list(as_completed(futs, timeout=a["timeout"], n=a["n"],
                                                         batch_size=a["batch_size"])),
    "event": lambda q, a, _: q.record_event(a["exp_id"], a["kind"], a["data"]),
    "events": lambda q, a, _: q.events(a["exp_id"], a["kind"]),
    "status": lambda q, a, _: q.set_experiment_status(a["exp_id"], a["kind"]),
    "stop": lambda q, a, _: q.stop_pools(a["task_type"], a["mode"]),
    "leases": lambda q, a, held: q.extend_leases(held, lease_s=a["timeout"]),
    "report": _report,
}


def _check_one(q: Any, db_url: str, name: str, args: dict[str, Any]) -> None:
    # Work an operation needs is made before the counts are taken: final futures (as_completed
    # yields them at once) or held leases.
    prepared: list[Any] = []
    if name == "as_completed":
        fut = q.submit("prop-setup", 78, "x")
        fut.cancel()
        prepared = [fut]
    elif name in ("leases", "report"):
        q.submit("prop-setup", 77, "x")
        prepared = list(q.claim(77, n=5, pool="prop"))
    before = counts(db_url)
    try:
        RUN[name](q, args, prepared)
    except (InvalidInput, UnknownTask):
        after = counts(db_url)
        assert after == before, f"{name} failed but wrote rows: {before} -> {after}"


PROPERTY = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@PROPERTY
@given(op=operations)
def test_property_local_api_only_succeeds_or_refuses(queue: LocalTaskQueue, db_url: str,
                                                     op: tuple[str, dict[str, Any]]) -> None:
    _check_one(queue, db_url, *op)


@pytest.fixture(scope="module")
def shared_service(admin_url: str) -> Iterator[tuple[ServiceTaskQueue, str]]:
    import psycopg

    name = f"eqflow_hardening_prop_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name} TEMPLATE eqflow_test_template")
    url = psycopg.conninfo.make_conninfo(admin_url, dbname=name)
    svc = ServiceProcess(url).start()
    q = ServiceTaskQueue(svc.url, TOKEN, retry_timeout=5.0)
    yield q, url
    q.close()
    svc.cleanup()


@PROPERTY
@given(op=operations)
def test_property_service_only_succeeds_or_refuses(shared_service: tuple[ServiceTaskQueue, str],
                                                   op: tuple[str, dict[str, Any]]) -> None:
    q, url = shared_service
    _check_one(q, url, *op)


submit_bodies = st.fixed_dictionaries({"exp_id": texts, "task_type": numbers, "payloads": st.lists(texts, max_size=2)},
                                      optional={"priority": numbers, "tag": st.none() | texts,
                                                "max_attempts": numbers, "idempotency_key": texts})
claim_bodies = st.fixed_dictionaries({"task_types": st.lists(numbers, max_size=2)},
                                     optional={"n": numbers, "pool": texts, "timeout": short_timeouts,
                                               "lease_s": numbers})


@PROPERTY
@given(call=st.tuples(st.just("/v1/tasks"), submit_bodies) | st.tuples(st.just("/v1/tasks/claim"), claim_bodies))
def test_property_raw_service_bodies_get_a_4xx_or_succeed(shared_service: tuple[ServiceTaskQueue, str],
                                                          call: tuple[str, dict[str, Any]]) -> None:
    q, url = shared_service
    route, body = call
    before = counts(url)
    # json.dumps writes NaN/Infinity tokens and \ud800 escapes, as a careless client would
    response = httpx.post(q.url + route, content=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json", "Authorization": f"Bearer {q.token}"})
    assert response.status_code < 500, (route, body, response.text)
    if response.status_code >= 400:
        assert counts(url) == before


RAW_REQUESTS = [
    ("GET", "/v1/stats?exp_id=%ED%A0%80", None), ("GET", "/v1/stats?exp_id=%00", None),
    ("GET", "/v1/experiments/tasks?exp_id=%00", None), ("GET", "/v1/experiments/tasks?exp_id=%ED%A0%80", None),
    ("GET", "/v1/experiments/tasks?exp_id=", None), ("GET", "/v1/experiments/%00/tasks", None),
    ("GET", "/v1/experiments/%ED%A0%80/tasks", None), ("GET", "/v1/events?exp_id=x&kind=%00", None),
    ("GET", "/v1/experiments/status?exp_id=%ED%A0%80", None), ("GET", "/v1/queues/open?task_type=NaN", None),
    ("POST", "/v1/events", b'{"exp_id": "x", "kind": "k", "data": {"\\ud800": 1}}'),
    ("POST", "/v1/events", b'{"exp_id": "x", "kind": "k", "data": {"v": NaN}}'),
    ("POST", "/v1/events", b'{"exp_id": "x", "kind": "k", "data": {"v": "\\u0000"}}'),
    ("POST", "/v1/experiments/status", b'{"exp_id": "x", "status": "\\ud800"}'),
    ("POST", "/v1/tasks/completions", b'{"task_ids": [1], "exp_ids": ["\\ud800"], "timeout": NaN}'),
    ("POST", "/v1/tasks/completions", b'{"task_ids": [1], "exp_ids": ["a|b"], "timeout": Infinity}'),
    ("POST", "/v1/tasks/fail", b'{"failures": [{"task_id": 1, "claim_id": 1, "error": "\\ud800"}]}'),
    ("POST", "/v1/tasks/heartbeat", b'{"tasks": [{"task_id": 1, "claim_id": 1}], "lease_s": NaN}'),
    ("POST", "/v1/pools/stop", b'{"task_type": 1, "mode": "\\ud800"}'),
    ("POST", "/v1/tasks/priorities", b'{"task_ids": [1], "priority": 1e400}'),
]


def test_raw_requests_with_bad_text_or_numbers_get_a_4xx(service: ServiceProcess, db_url: str) -> None:
    # A query string's invalid UTF-8 (%ED%A0%80) arrives as U+FFFD, a valid character: a GET may
    # answer 200. Every body here is refused, and nothing answers 5xx.
    failures = []
    for method, path, body in RAW_REQUESTS:
        response = httpx.request(method, service.url + path, content=body, headers=AUTH, timeout=40)
        if response.status_code >= 500 or (body is not None and response.status_code < 400):
            failures.append((method, path, body, response.status_code, response.text[:200]))
    assert failures == [], "\n".join(map(str, failures))
    assert counts(db_url) == (0, 0, 0, 0)
