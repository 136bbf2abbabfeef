"""The FunSearch ME on a real PostgreSQL: candidates, the evaluation cache, resets, stale results,
the in-flight cap, resume after a kill, and a short run with real sampler and evaluator pools."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from eqflow.config import WorkflowConfig
from eqflow.funsearch import tasks as pool_tasks
from eqflow.funsearch.engine import FunSearch, island_tag
from eqflow.funsearch.outputs import write_outputs
from eqflow.queue import LocalTaskQueue
from tests.conftest import sql, wait_for

SAMPLE, EVALUATE = 10, 11
REPO = Path(__file__).resolve().parents[1]


def config(db_url: str, out: Path, **funsearch: Any) -> WorkflowConfig:
    fs = {"spec": "deletion_codes", "tests": [{"n": 6, "s": 1}], "num_islands": 4, "samples_per_prompt": 3,
          "eval_timeout_s": 10, **funsearch}
    return WorkflowConfig.model_validate({
        "dbs": {"main": {"type": "url", "url": db_url}},
        "pools": {"samplers": {"type": "local", "fn": "eqflow.funsearch.tasks:sample", "workers": 1},
                  "evaluators": {"type": "local", "fn": "eqflow.funsearch.tasks:evaluate", "workers": 2}},
        "tasks": {"sample": {"type": SAMPLE, "pools": ["samplers"]},
                  "evaluate": {"type": EVALUATE, "pools": ["evaluators"]}},
        "funsearch": fs, "output_dir": str(out), "seed": 3})


def engine(queue: LocalTaskQueue, tmp_path: Path, exp_id: str = "fs", **funsearch: Any) -> FunSearch:
    cfg = config(queue.url, tmp_path, **funsearch)
    return FunSearch(queue, cfg, exp_id, out=tmp_path / exp_id, progress=False, start_pools=False)


def serve(queue: LocalTaskQueue, task_type: int, answer: Any, limit: int = 100) -> list[int]:
    """Act as a pool for one round: claim what is queued of a type, report answer(payload)."""
    claimed = queue.claim(task_type, n=limit, pool="test-pool")
    queue.report([(t, answer(t.payload)) for t in claimed])
    return [t.task_id for t in claimed]


def process(fs: FunSearch, task_ids: list[int]) -> None:
    fs._process(fs.db.fetch_all("fs_task_outcomes", {"task_ids": task_ids}))


def bodies(*texts: str) -> Any:
    return lambda payload: json.dumps({"bodies": list(texts)})


def evaluate_for_real(payload: str) -> str:
    return pool_tasks.evaluate(payload)


def seeded(queue: LocalTaskQueue, tmp_path: Path, **funsearch: Any) -> FunSearch:
    """An engine whose seed program is evaluated and registered on every island."""
    fs = engine(queue, tmp_path, **funsearch)
    fs.open()
    process(fs, serve(queue, EVALUATE, evaluate_for_real))
    assert fs.view.total() == fs.fs.num_islands
    return fs


def test_the_seed_is_evaluated_once_and_registered_on_every_island(queue: LocalTaskQueue, tmp_path: Path) -> None:
    fs = engine(queue, tmp_path)
    fs.open()
    assert len(fs.evaluations) == 1  # one body, one evaluation, four islands waiting on it
    process(fs, serve(queue, EVALUATE, evaluate_for_real))
    assert [len(i.programs) for i in fs.view.islands] == [1, 1, 1, 1]
    assert fs.view.best is not None and fs.view.best.scores == {'{"n":6,"s":1}': 8.0}  # lexicographic greedy


def test_identical_bodies_cost_one_evaluation(queue: LocalTaskQueue, tmp_path: Path) -> None:
    fs = seeded(queue, tmp_path)
    fs._submit_sample(0)
    fs._submit_sample(1)
    same = ("    return float(sum(el))", "    # the same program, other spacing\n    return float( sum(el) )")
    process(fs, serve(queue, SAMPLE, bodies(*same)))
    evaluations = sql(queue.url, "SELECT count(*) FROM tasks WHERE exp_id = 'fs' AND task_type = %s", (EVALUATE,))
    assert evaluations[0][0] == 2  # the seed's and this body's, once for four candidates
    process(fs, serve(queue, EVALUATE, evaluate_for_real))
    fs._submit_sample(2)
    process(fs, serve(queue, SAMPLE, bodies(same[0])))
    assert fs.counters.cache_hits >= 1
    assert sql(queue.url, "SELECT count(*) FROM tasks WHERE exp_id = 'fs' AND task_type = %s",
               (EVALUATE,))[0][0] == 2  # answered from the cache
    states = dict(sql(queue.url, "SELECT state, count(*) FROM fs_candidates WHERE exp_id = 'fs' "
                                 "AND sample_task_id > 0 GROUP BY state"))
    assert states == {"registered": 3, "duplicate": 2}  # one per island; the repeats on island 0/1 are duplicates


def test_garbage_completions_become_parse_failures(queue: LocalTaskQueue, tmp_path: Path) -> None:
    fs = seeded(queue, tmp_path)
    fs._submit_sample(0)
    process(fs, serve(queue, SAMPLE, bodies("this is not python (", "", "```\n)))\n```", "    return 1.5")))
    states = dict(sql(queue.url, "SELECT state, count(*) FROM fs_candidates WHERE exp_id = 'fs' "
                                 "AND sample_task_id > 0 GROUP BY state"))
    assert states == {"unparsed": 3, "pending": 1}
    assert fs.counters.unparsed == 3


def test_a_failed_sample_task_is_recorded_and_the_loop_goes_on(queue: LocalTaskQueue, tmp_path: Path) -> None:
    fs = seeded(queue, tmp_path)
    fs._submit_sample(0)
    claimed = queue.claim(SAMPLE, n=1, pool="test-pool")
    queue.report_failure([(claimed[0], "Traceback: the sampler crashed")], retry=False)
    process(fs, [claimed[0].task_id])
    assert fs.counters.samples_failed == 1 and not fs.samples
    assert sql(queue.url, "SELECT state FROM fs_candidates WHERE sample_task_id = %s",
               (claimed[0].task_id,)) == [("failed",)]


def test_reset_cancels_exactly_the_reset_islands_queued_tasks(queue: LocalTaskQueue, tmp_path: Path) -> None:
    fs = seeded(queue, tmp_path, num_islands=4)
    # Make islands 0 and 1 the strong ones (a Varshamov-Tenengolts priority: 10 words, not 8).
    vt = "    return float(sum((i + 1) * x for i, x in enumerate(el)) % (n + 1) == 0)"
    for island, body in ((0, vt), (1, vt)):
        fs._submit_sample(island)
        process(fs, serve(queue, SAMPLE, bodies(body)))
        process(fs, serve(queue, EVALUATE, evaluate_for_real))
    assert [i.best_score for i in fs.view.islands] == [10, 10, 8, 8]
    weak = [2, 3]
    for island in range(4):
        fs._submit_sample(island)
        fs._submit_sample(island)
    queued = sql(queue.url, "SELECT task_id, tag FROM tasks WHERE exp_id = 'fs' AND status = 'queued'")
    canceled = fs.reset("test")
    expected = sorted(t for t, tag in queued if tag in {island_tag(i) for i in weak})
    assert sorted(canceled) == expected and len(expected) == 4
    still = sql(queue.url, "SELECT tag FROM tasks WHERE exp_id = 'fs' AND status = 'queued'")
    assert {tag for (tag,) in still} == {island_tag(i) for i in range(4) if i not in weak}
    versions = dict(sql(queue.url, "SELECT island, version FROM fs_islands WHERE exp_id = 'fs'"))
    assert {i for i, v in versions.items() if v == 1} == set(weak)
    for island in weak:  # each seeded with a survivor's best
        assert len(fs.view.islands[island].programs) == 1


def test_results_for_a_reset_island_are_dropped_as_stale(queue: LocalTaskQueue, tmp_path: Path) -> None:
    fs = seeded(queue, tmp_path, num_islands=2)
    fs._submit_sample(0)  # island 0 gets a better program, so island 1 is the one reset
    process(fs, serve(queue, SAMPLE, bodies("    return float(sum((i + 1) * x for i, x in enumerate(el)) % 7 == 0)")))
    process(fs, serve(queue, EVALUATE, evaluate_for_real))
    fs._submit_sample(0)
    fs._submit_sample(1)
    claimed = queue.claim(SAMPLE, n=2, pool="test-pool")  # running: a reset cannot cancel them
    weak = [1]
    assert fs.reset("test") == []
    queue.report([(t, json.dumps({"bodies": ["    return float(el[-1])"]})) for t in claimed])
    process(fs, [t.task_id for t in claimed])
    process(fs, serve(queue, EVALUATE, evaluate_for_real))
    rows = sql(queue.url, "SELECT island, state FROM fs_candidates WHERE exp_id = 'fs' AND sample_task_id = ANY(%s)",
               ([t.task_id for t in claimed],))
    by_island = dict(rows)
    assert by_island[weak[0]] == "stale"
    assert by_island[1 - weak[0]] == "registered"
    programs = sql(queue.url, "SELECT island, island_version FROM fs_programs WHERE exp_id = 'fs' "
                              "AND body LIKE '%%el[-1]%%'")
    assert [p[0] for p in programs] == [1 - weak[0]]


def test_an_evaluation_canceled_by_a_reset_is_redone_for_the_island_that_still_waits(
        queue: LocalTaskQueue, tmp_path: Path) -> None:
    fs = seeded(queue, tmp_path, num_islands=2)
    weak, strong = [1], 0
    fs._submit_sample(strong)  # island 0 gets a better program, so island 1 is the one reset
    process(fs, serve(queue, SAMPLE, bodies("    return float(sum((i + 1) * x for i, x in enumerate(el)) % 7 == 0)")))
    process(fs, serve(queue, EVALUATE, evaluate_for_real))
    fs._submit_sample(weak[0])
    process(fs, serve(queue, SAMPLE, bodies("    return float(el[1])")))  # evaluation tagged with the weak island
    fs._submit_sample(strong)
    process(fs, serve(queue, SAMPLE, bodies("    return float(el[1])")))  # the same body: waits on it
    assert len(fs.evaluations) == 1
    fs.reset("test")
    rows = sql(queue.url, "SELECT task_id FROM tasks WHERE exp_id = 'fs' AND task_type = %s AND status = 'canceled'",
               (EVALUATE,))
    process(fs, [r[0] for r in rows])
    assert len(fs.evaluations) == 1  # resubmitted for the strong island
    process(fs, serve(queue, EVALUATE, evaluate_for_real))
    states = sql(queue.url, "SELECT island, state FROM fs_candidates WHERE exp_id = 'fs' AND sample_task_id > 0 "
                            "ORDER BY sample_task_id")
    assert states == [(strong, "registered"), (weak[0], "stale"), (strong, "registered")]


def test_a_short_run_with_real_pools(queue: LocalTaskQueue, tmp_path: Path) -> None:
    """Sampler and evaluator pools as subprocesses; stops at the VT size for n=6 (10), never more
    samples in flight than the cap, every body evaluated at most once."""
    cfg = config(queue.url, tmp_path, optimal_solution_programs=3, max_evaluations=1500, max_seconds=200,
                 samples_per_prompt=4)
    fs = FunSearch(queue, cfg, "short", out=tmp_path / "short", progress=False)
    stop = fs.run()
    assert stop.finished and stop.reason.startswith("targets reached"), stop
    sample_cap, _ = fs.caps()
    assert fs.counters.max_samples_in_flight <= sample_cap
    intervals = sql(queue.url, "SELECT created_at, finished_at FROM tasks WHERE exp_id = 'short' "
                               "AND task_type = %s AND finished_at IS NOT NULL", (SAMPLE,))
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert peak <= sample_cap
    evaluated = sql(queue.url, "SELECT count(*), count(DISTINCT payload::json ->> 'body_hash') FROM tasks "
                               "WHERE exp_id = 'short' AND task_type = %s", (EVALUATE,))
    assert evaluated[0][0] == evaluated[0][1]  # no body evaluated twice
    summary = write_outputs(queue.db, "short", fs.spec, fs.tests, tmp_path / "short")
    assert summary["sizes"] == [{"n": 6, "s": 1, "size": 10, "known": 10}]
    assert (tmp_path / "short" / "sizes.csv").read_text().splitlines() == ["n,s,size,known", "6,1,10,10"]
    best = (tmp_path / "short" / "best_program.py").read_text()
    namespace: dict[str, Any] = {}
    exec(compile(best, "best_program.py", "exec"), namespace)  # our own output file, not a candidate
    assert len(namespace["evaluate"](n=6, s=1)) == 10
    assert queue.experiment_status("short") == "finished"
    assert sql(queue.url, "SELECT count(*) FROM tasks WHERE exp_id = 'short' AND status = 'queued'")[0][0] == 0


def test_killed_me_resumes_without_losing_or_repeating_a_program(db_url: str, tmp_path: Path) -> None:
    cfg = yaml.safe_load((REPO / "cfgs" / "funsearch_local.yaml").read_text())
    cfg["dbs"] = {"main": {"type": "url", "url": db_url}}
    cfg["output_dir"] = str(tmp_path)
    cfg["funsearch"].update(tests=[{"n": 7, "s": 1}], max_evaluations=400, max_seconds=None, reset_period_s=5,
                            optimal_solution_programs=10_000)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "eqflow.funsearch", "run", "resume", "--cfg", str(path), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: sql(db_url, "SELECT count(*) FROM fs_programs WHERE exp_id = 'resume'")[0][0] >= 30,
                        timeout=120)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    before = sql(db_url, "SELECT count(*) FROM fs_programs WHERE exp_id = 'resume'")[0][0]
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "evaluation budget of 400 reached" in second.stderr
    after = sql(db_url, "SELECT count(*) FROM fs_programs WHERE exp_id = 'resume'")[0][0]
    assert after > before
    # Nothing lost: every candidate of a finished evaluation is settled.
    unsettled = sql(db_url, "SELECT count(*) FROM fs_candidates c JOIN fs_evaluations e USING (exp_id, body_hash) "
                            "WHERE c.exp_id = 'resume' AND c.state = 'pending' AND e.status IS NOT NULL")
    assert unsettled[0][0] == 0
    # Nothing twice: one program per registered candidate, one evaluation task per body.
    twice = sql(db_url, "SELECT count(*) FROM (SELECT program_id FROM fs_candidates WHERE exp_id = 'resume' "
                        "AND program_id IS NOT NULL GROUP BY program_id HAVING count(*) > 1) d")
    assert twice[0][0] == 0
    orphans = sql(db_url, "SELECT count(*) FROM fs_programs p WHERE exp_id = 'resume' AND sampler <> 'reset' "
                          "AND NOT EXISTS (SELECT 1 FROM fs_candidates c WHERE c.program_id = p.program_id)")
    assert orphans[0][0] == 0
    evaluations = sql(db_url, "SELECT count(*), count(DISTINCT payload::json ->> 'body_hash') FROM tasks "
                              "WHERE exp_id = 'resume' AND task_type = %s AND status = 'complete'", (EVALUATE,))
    assert evaluations[0][0] == evaluations[0][1]
    assert (tmp_path / "resume" / "summary.json").exists()


@pytest.fixture(autouse=True)
def _no_pools_left(db_url: str) -> Any:
    yield
    # A killed ME leaves its pools running: stop whatever still serves this database. A pool
    # waits out a database outage for ever, so one left behind when the tests' cluster goes
    # away would never exit: those the stop request has not ended are sent SIGTERM.
    with LocalTaskQueue(db_url, create_db=False) as queue:
        queue.stop_pools([SAMPLE, EVALUATE], mode="now")
    import psutil

    def ours() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if "eqflow.workers.pool" in (proc.info["cmdline"] or []) and \
                        proc.environ().get("EQFLOW_DB_URL") == db_url:
                    found.append(proc)
            except psutil.Error:
                pass
        return found

    if not wait_for(lambda: not ours(), timeout=20):
        for proc in ours():
            proc.terminate()
        psutil.wait_procs(ours(), timeout=15)


HOSTILE = {
    "loop": ("    while True:\n        pass", {"timeout"}),
    "memory": ("    x = bytearray(10 * 1024 ** 3)\n    return 0.0", {"memory"}),
    "fork bomb": ("    import os\n    while True:\n        os.fork()", {"timeout", "error"}),
    "kill parent": ("    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 0.0", {"error"}),
    "exit": ("    import os\n    os._exit(0)", {"error"}),
    "raise": ("    raise RuntimeError('candidate says no')", {"error"}),
}


def test_an_evaluator_pool_survives_hostile_candidates(queue: LocalTaskQueue, tmp_path: Path) -> None:
    """A real evaluator pool process runs each hostile body; every task completes with the right
    status, the pool is still there afterwards, and a sound body still scores."""
    fs = engine(queue, tmp_path, eval_timeout_s=3)
    fs.open()  # the seed's evaluation task is queued too
    payloads = [json.dumps({**fs.eval_payload, "body": body}) for body, _ in HOSTILE.values()]
    futures = queue.submit_many("hostile", EVALUATE, payloads)
    pool = subprocess.Popen([sys.executable, "-m", "eqflow.cli", "pool", "run", "--types", str(EVALUATE), "--fn",
                             "eqflow.funsearch.tasks:evaluate", "--db", queue.url, "--workers", "1",
                             "--name", "evaluators", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ,
                                                                                    "PYTHONPATH": str(REPO)})
    try:
        for (name, (_, expected)), future in zip(HOSTILE.items(), futures, strict=True):
            outcome = json.loads(future.result(timeout=120))
            assert outcome["status"] in expected, (name, outcome)
        assert pool.poll() is None, "the pool died"
        good = queue.submit("hostile", EVALUATE, json.dumps({**fs.eval_payload, "body": "    return 0.0"}))
        assert json.loads(good.result(timeout=60))["scores"] == {'{"n":6,"s":1}': 8.0}
        assert pool.poll() is None
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(timeout=60)


def test_the_same_sampler_and_evaluator_search_cap_sets(queue: LocalTaskQueue, tmp_path: Path) -> None:
    """A second problem, nothing but the spec changed: the lexicographic greedy gives a 16-point
    cap in F_3^4; the search must find a larger one (the maximum is 20)."""
    cfg = config(queue.url, tmp_path, spec="cap_set", tests=[{"n": 4}], targets=[18], optimal_solution_programs=0,
                 max_seconds=150)
    fs = FunSearch(queue, cfg, "caps", out=tmp_path / "caps", progress=False)
    stop = fs.run()
    assert stop.reason.startswith("targets reached"), stop
    summary = write_outputs(queue.db, "caps", fs.spec, fs.tests, tmp_path / "caps")
    assert summary["sizes"][0]["size"] >= 18 and summary["sizes"][0]["known"] == 20


def test_with_dynamic_scaling_the_scaler_starts_the_pools(queue: LocalTaskQueue, tmp_path: Path) -> None:
    """funsearch.scaling.enabled: no pool from the config; the scaler's first checks start
    min_samplers / min_evaluators (CPU rule: no GPU here) and its decisions are recorded."""
    scaling = {"enabled": True, "check_interval": 0.5, "min_samplers": 1, "min_evaluators": 1, "max_samplers": 1,
               "max_evaluators": 2, "samplers_need_gpu": False, "cpu_usage_threshold": 100,
               "normalized_load_threshold": 1000, "min_system_memory_gib": 0}
    cfg = config(queue.url, tmp_path, optimal_solution_programs=0, max_seconds=150, scaling=scaling)
    fs = FunSearch(queue, cfg, "scaled", out=tmp_path / "scaled", progress=False)
    stop = fs.run()
    assert stop.reason.startswith("targets reached"), stop
    started_by = {(e.data["task"], e.data["reason"].split(";")[0]) for e in queue.events("scaled", kind="pool_started")}
    assert started_by == {("sampler", "0 samplers < min_samplers 1"), ("evaluator", "0 evaluators < min_evaluators 1")}
    started = sql(queue.url, "SELECT count(*) FROM scaling_decisions WHERE action = 'start'")[0][0]
    assert started >= 2  # a sampler and an evaluator
    assert list((tmp_path / "scaled" / "logs").glob("resources_*.log"))
    assert wait_for(lambda: not queue.pools(active_only=True), timeout=60)  # stopped at the end


def test_resuming_with_fewer_islands_is_refused_before_anything_changes(queue: LocalTaskQueue, tmp_path: Path) -> None:
    engine(queue, tmp_path, num_islands=4).open()
    before = sql(queue.url, "SELECT count(*) FROM fs_candidates")[0][0]
    with pytest.raises(ValueError, match="num_islands: 4"):
        engine(queue, tmp_path, num_islands=2).open()
    assert sql(queue.url, "SELECT count(*) FROM fs_candidates")[0][0] == before


def test_an_exp_id_of_another_spec_or_workflow_is_refused(queue: LocalTaskQueue, tmp_path: Path) -> None:
    engine(queue, tmp_path).open()
    with pytest.raises(ValueError, match="ran another spec"):
        engine(queue, tmp_path, spec="cap_set", tests=[{"n": 3}]).open()
    queue.create_experiment("ackley-run", {"num_guesses": 10})
    with pytest.raises(ValueError, match="not a FunSearch run"):
        engine(queue, tmp_path, exp_id="ackley-run").open()


def test_a_kill_between_submitting_and_recording_an_evaluation_submits_nothing_new(
        queue: LocalTaskQueue, tmp_path: Path) -> None:
    """The state an ME leaves when killed after submitting an evaluate task and before writing its
    id: on resume the same task comes back (idempotency key), no second evaluation of the body."""
    engine(queue, tmp_path).open()
    (task_id,) = [r[0] for r in sql(queue.url, "SELECT task_id FROM tasks WHERE task_type = %s", (EVALUATE,))]
    sql(queue.url, "UPDATE fs_evaluations SET task_id = NULL")
    resumed = engine(queue, tmp_path)
    resumed.open()
    assert list(resumed.evaluations) == [task_id]
    assert sql(queue.url, "SELECT count(*) FROM tasks WHERE task_type = %s", (EVALUATE,))[0][0] == 1
    assert sql(queue.url, "SELECT task_id FROM fs_evaluations")[0][0] == task_id
