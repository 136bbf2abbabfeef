"""The ``openai`` sampler through the real ``openai`` client against a local OpenAI-compatible
server on 127.0.0.1 (tests/openai_stand_in.py): n completions, token usage and cost, retries with
backoff on 429/5xx/slow answers, and the API key kept out of logs, errors, results and the DB."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eqflow.funsearch.code import trim_completion
from eqflow.funsearch.openai_sampler import OpenAISampler, SamplerError
from eqflow.funsearch.samplers import SampleRequest, make_sampler
from eqflow.queue import LocalTaskQueue
from tests.conftest import sql, wait_for
from tests.openai_stand_in import BODIES, StandIn

HEADER = "def priority(el: tuple[int, ...], n: int) -> float:"
REPO = Path(__file__).resolve().parents[1]


def request(samples: int = 2, prompt: str = "def priority_v0(el, n):\n    return 0.0\n\n\ndef priority_v1(el, n):\n"
            ) -> SampleRequest:
    return SampleRequest(prompt=prompt, parents=(), function_name="priority", header=HEADER, samples=samples)


@pytest.fixture()
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "sk-test-" + secrets.token_hex(16)
    monkeypatch.setenv("EQFLOW_TEST_OPENAI_KEY", value)
    return value


def sampler(stand_in: StandIn, **config: object) -> OpenAISampler:
    return OpenAISampler({"base_url": stand_in.base_url, "model": "stand-in", "api_key_env": "EQFLOW_TEST_OPENAI_KEY",
                          "backoff_s": 0.05, **config})


def test_n_completions_usage_and_cost(key: str) -> None:
    with StandIn(key=key) as api:
        result = sampler(api).sample(request(samples=3))
    assert len(api.seen) == 1  # n=3 in one request
    seen = api.seen[0]
    assert (seen.path, seen.model, seen.n, seen.max_tokens, seen.authorized) == (
        "/v1/chat/completions", "stand-in", 3, 150, True)
    assert result.bodies == BODIES[:3]
    assert [trim_completion(b, "priority", HEADER) for b in result.bodies] == BODIES[:3]
    assert result.tokens_in == len(seen.prompt.split()) and result.tokens_out == sum(len(b.split()) for b in BODIES[:3])
    assert result.cost_usd == pytest.approx(result.tokens_in * 0.15e-6 + result.tokens_out * 0.60e-6)
    assert result.model == "stand-in"


def test_plain_completions_api_and_prices_from_the_config(key: str) -> None:
    with StandIn(key=key) as api:
        result = sampler(api, api="completions", max_tokens=40, price_input_per_m=1.0,
                         price_output_per_m=2.0).sample(request(samples=2))
    assert api.seen[0].path == "/v1/completions" and api.seen[0].max_tokens == 40
    assert api.seen[0].prompt.endswith("def priority_v1(el, n):\n")  # the prompt as built, no chat wrapper
    assert result.cost_usd == pytest.approx(result.tokens_in * 1e-6 + result.tokens_out * 2e-6)


def test_429_and_500_are_retried_with_backoff(key: str) -> None:
    with StandIn(key=key, script=["429", "500", "503", "ok"]) as api:
        s = sampler(api)
        started = time.monotonic()
        result = s.sample(request())
        took = time.monotonic() - started
    assert api.answers == ["429", "500", "503", "ok"]
    assert len(result.bodies) == 2 and s.retries == 3
    assert took >= 0.2  # the 429's Retry-After (0.2 s) was honoured


def test_a_slow_answer_times_out_and_is_asked_again(key: str) -> None:
    with StandIn(key=key, script=["slow:3"]) as api:
        started = time.monotonic()
        result = sampler(api, timeout_s=0.5).sample(request())
        took = time.monotonic() - started
    assert api.answers == ["slow:3", "ok"]
    assert len(result.bodies) == 2 and took < 2.5  # did not wait the slow answer out


def test_gives_up_after_max_retries_saying_why(key: str) -> None:
    with StandIn(key=key, script=["500"] * 5) as api, pytest.raises(SamplerError, match=r"HTTP 500.*3 tries"):
        sampler(api, max_retries=2).sample(request())
    assert api.answers == ["500"] * 3


def test_a_server_that_ignores_n_is_asked_until_there_are_enough(key: str) -> None:
    with StandIn(key=key, ignore_n=True) as api:
        result = sampler(api).sample(request(samples=3))
    assert [s.n for s in api.seen] == [3, 2, 1] and len(result.bodies) == 3


def test_the_key_stays_out_of_errors_and_logs(key: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # openai's and httpx's debug logs included
    for name in ("openai", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    with StandIn(key="sk-the-right-one") as api:  # our key is wrong: the server echoes it in its 401
        with pytest.raises(SamplerError) as caught:
            sampler(api).sample(request())
        assert len(api.seen) == 1  # a 401 is not retried
    assert "401" in str(caught.value) and "***" in str(caught.value)
    assert key not in str(caught.value) and caught.value.__cause__ is None and caught.value.__suppress_context__
    with StandIn(key=key, script=["429", "ok"]) as api:
        s = sampler(api)
        s.sample(request())
        assert key not in repr(s)
        logging.getLogger("somebody.else").warning("a careless line: %s", os.environ["EQFLOW_TEST_OPENAI_KEY"])
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "HTTP Request" in text or "Request options" in text  # the client's own logging was captured
    assert "a careless line: ***" in text  # any logger's line that would carry the key has it masked
    assert key not in text


def test_the_key_is_read_from_the_environment_only(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="environment only"):
        OpenAISampler({"model": "gpt-4o-mini", "api_key": key})
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match=r"set \$OPENAI_API_KEY"):
        OpenAISampler({"model": "gpt-4o-mini"})
    assert make_sampler({"type": "openai", "base_url": "http://127.0.0.1:9/v1"}).name == "openai"  # no key: local


def test_a_sampler_pool_serves_sample_tasks_and_the_key_stays_out_of_db_and_logs(
        queue: LocalTaskQueue, key: str, tmp_path: Path) -> None:
    """A real pool (threads) runs eqflow.funsearch.tasks:sample against the stand-in; the key is in
    the pool's environment only, never in a payload, a result, a log line or any table."""
    with StandIn(key=key, script=["429"]) as api:
        config = {"type": "openai", "base_url": api.base_url, "model": "stand-in",
                  "api_key_env": "EQFLOW_TEST_OPENAI_KEY", "backoff_s": 0.05}
        payloads = [json.dumps({"sampler": config, "request": {
            "prompt": f"# task {i}\ndef priority_v0(el, n):\n", "parents": [], "function_name": "priority",
            "header": HEADER, "samples": 2, "seed": i, "params": {}}}) for i in range(6)]
        futures = queue.submit_many("oa", 10, payloads)
        log_path = tmp_path / "pool.log"
        with log_path.open("wb") as log_file:
            pool = subprocess.Popen(
                [sys.executable, "-m", "eqflow.workers.pool", "--types", "10", "--fn",
                 "eqflow.funsearch.tasks:sample", "--threads", "--workers", "3", "--name", "openai-samplers",
                 "--idle-exit", "2", "--db", queue.url],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)})
            try:
                assert wait_for(lambda: queue.stats("oa").get(10, {}).get("complete", 0) == 6, timeout=60)
            finally:
                pool.terminate()
                pool.wait(timeout=30)
    rows = sql(queue.url, "SELECT result FROM tasks WHERE exp_id = 'oa' ORDER BY task_id")
    results = [json.loads(str(r[0])) for r in rows]
    assert all(len(r["bodies"]) == 2 and r["tokens_out"] > 0 and r["sampler"] == "openai" for r in results)
    assert sum(r["cost_usd"] for r in results) > 0
    assert len(api.seen) == 7 and all(s.authorized for s in api.seen)  # one 429, retried
    assert [f.task_id for f in futures]
    tables = [r[0] for r in sql(queue.url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    for table in tables:
        rows = sql(queue.url, f"SELECT t::text FROM {table} t")  # table names from the catalogue
        assert not any(key in str(row[0]) for row in rows), table
    assert key not in log_path.read_text(errors="replace")
    assert "pool started" in log_path.read_text(errors="replace")


def test_a_funsearch_run_sampling_through_the_api_keeps_the_key_out_of_everything(
        db_url: str, key: str, tmp_path: Path) -> None:
    """`python -m eqflow.funsearch run` with the openai sampler against the stand-in (one 429 on the
    way): candidates from the API are evaluated and registered; the key, in the environment only,
    is in no output file, log, pool log or table."""
    import yaml

    with StandIn(key=key, script=["429"]) as api:
        cfg = yaml.safe_load((REPO / "cfgs" / "funsearch_local.yaml").read_text())
        cfg["dbs"] = {"main": {"type": "url", "url": db_url}}
        cfg["output_dir"] = str(tmp_path / "out")
        cfg["pools"]["samplers"]["workers"] = 2
        cfg["funsearch"].update(
            tests=[{"n": 6, "s": 1}], num_islands=2, samples_per_prompt=2, max_evaluations=5, max_seconds=90,
            sampler={"type": "openai", "base_url": api.base_url, "model": "stand-in",
                     "api_key_env": "EQFLOW_TEST_OPENAI_KEY", "backoff_s": 0.05})
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))
        run = subprocess.run([sys.executable, "-m", "eqflow.funsearch", "run", "oa", "--cfg", str(path),
                              "--no-progress", "-vv"], cwd=tmp_path, capture_output=True, text=True, timeout=180,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "evaluation budget of 5 reached" in run.stderr, run.stderr[-3000:]
    assert api.answers[0] == "429" and len(api.seen) >= 2 and all(s.authorized for s in api.seen)
    assert "def priority_v0(" in api.seen[-1].prompt  # the engine's prompt, parents renamed
    registered = sql(db_url, "SELECT count(*) FROM fs_programs WHERE exp_id = 'oa' AND sampler = 'openai'")[0][0]
    assert int(str(registered)) >= 1  # the API's bodies became programs
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.name == "summary.json" for p in files) and any(p.suffix == ".log" for p in files)
    for file in files:
        assert key not in file.read_text(errors="replace"), file
    assert key not in run.stdout + run.stderr
    tables = [r[0] for r in sql(db_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    for table in tables:
        assert not any(key in str(row[0]) for row in sql(db_url, f"SELECT t::text FROM {table} t")), table
