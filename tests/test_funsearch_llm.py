"""Prompts as the reference builds them, and the ``transformers`` sampler on a tiny randomly
initialised GPT-2 made here (tokenizer trained on a few strings, ``save_pretrained``, loaded by
path; nothing downloaded): samples per prompt, token counts, the batched window, offline use, the
missing-extra message, and a short FunSearch run whose sampler pool serves the model."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from eqflow.config import WorkflowConfig
from eqflow.funsearch.code import function_source, trim_completion
from eqflow.funsearch.prompts import build_prompt, restore_names
from eqflow.funsearch.samplers import SampleRequest, make_sampler
from eqflow.funsearch.spec import Spec
from eqflow.queue import LocalTaskQueue
from tests.conftest import sql, wait_for

REPO = Path(__file__).resolve().parents[1]
SAMPLE, EVALUATE = 30, 31
pytest.importorskip("torch", reason="the transformers sampler tests need eqflow[ml] (scripts/setup.sh installs it)")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_lm import make_model

    return make_model(tmp_path_factory.mktemp("tiny-gpt2"))


def sampler_config(model: Path, **extra: Any) -> dict[str, Any]:
    return {"type": "transformers", "model": str(model), "max_new_tokens": 24, "torch_threads": 1, **extra}


# -- prompts ----------------------------------------------------------------------------------------
def test_prompt_renames_versions_documents_improvements_and_ends_with_a_bare_header() -> None:
    spec = Spec.load("deletion_codes")
    parents = [function_source(spec.header, spec.initial_body),
               function_source(spec.header, "    # weight of the word\n"
                                            "    return float(sum(el)) + priority(el[1:], n, s) if el else 0.0")]
    prompt = build_prompt(spec, parents)
    assert prompt.startswith('"""' + spec.docstring.strip()[:40])
    assert spec.imports.strip() in prompt
    v0, v1, v2 = (spec.header.replace("def priority(", f"def priority_v{i}(") for i in range(3))
    assert prompt.index(v0) < prompt.index(v1) < prompt.index(v2)
    assert prompt.endswith(v2 + "\n")  # the bare header: the model writes the body
    assert spec.function_docstring.splitlines()[0] in prompt.split(v1)[0]  # v0 keeps the spec's docstring
    assert '"""Improved version of `priority_v0`."""' in prompt.split(v1)[1]
    assert "# weight of the word" in prompt and "priority_v1(el[1:], n, s)" in prompt  # recursion renamed too
    assert "def priority(" not in prompt
    # Valid Python once a body is appended: what a completion continues.
    module = ast.parse(prompt + "    return 1.0\n")
    assert [f.name for f in module.body if isinstance(f, ast.FunctionDef)] == ["priority_v0", "priority_v1",
                                                                                "priority_v2"]
    assert build_prompt(spec, []).endswith(v0 + "\n")


def test_a_completion_is_trimmed_to_the_body_and_named_back() -> None:
    spec = Spec.load("deletion_codes")
    completion = "    return priority_v2(el[1:], n, s) + 1.0 if el else 0.0\n\n\ndef priority_v3(el, n, s):\n    pass"
    body = trim_completion(completion, spec.function_name, spec.header)
    assert body is not None
    assert restore_names(body, spec.function_name) == "    return priority(el[1:], n, s) + 1.0 if el else 0.0\n"


# -- the transformers sampler ---------------------------------------------------------------------
def test_samples_per_prompt_tokens_and_seed(tiny_model: Path) -> None:
    sampler = make_sampler(sampler_config(tiny_model, batch_window_s=0))
    assert sampler is make_sampler(sampler_config(tiny_model, batch_window_s=0))  # loaded once, kept warm
    prompt = build_prompt(Spec.load("deletion_codes"), [])
    request = SampleRequest(prompt=prompt, parents=(), function_name="priority", header="def priority(el, n, s):",
                            samples=3, seed=7)
    first = sampler.sample(request)
    assert len(first.bodies) == 3 and all(isinstance(b, str) for b in first.bodies)
    tokenizer = sampler.tokenizer  # type: ignore[attr-defined]
    assert first.tokens_in == len(tokenizer(prompt)["input_ids"])
    assert 3 <= first.tokens_out <= 3 * 24
    assert first.gpu_seconds == 0.0 and first.seconds > 0 and first.model == str(tiny_model)
    assert sampler.sample(request).bodies == first.bodies  # same seed, same answer
    assert sampler.sample(SampleRequest(**{**request.__dict__, "seed": 8})).bodies != first.bodies


def test_prompts_arriving_together_share_one_generate(tiny_model: Path) -> None:
    sampler = make_sampler(sampler_config(tiny_model, batch_window_s=0.5, max_batch=4))
    results: dict[int, Any] = {}
    prompts = [f"def priority_v0(el, n, s):\n    return {i}.0\n\n\ndef priority_v1(el, n, s):\n" * (1 + i % 2)
               for i in range(6)]

    def ask(i: int) -> None:
        results[i] = sampler.sample(SampleRequest(prompt=prompts[i], parents=(), function_name="priority",
                                                  header="def priority(el, n, s):", samples=2, seed=i))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == list(range(6))
    assert sampler.batches == [4, 2]  # type: ignore[attr-defined]  # max_batch 4, then what was left
    tokenizer = sampler.tokenizer  # type: ignore[attr-defined]
    for i, result in results.items():  # left padding: each prompt's own count, not the padded length
        assert len(result.bodies) == 2 and result.tokens_in == len(tokenizer(prompts[i])["input_ids"])


def test_offline_loading_never_reaches_for_a_hub(tiny_model: Path) -> None:
    code = ("from eqflow.funsearch.samplers import make_sampler\n"
            "try:\n    make_sampler({'type': 'transformers', 'model': 'bigcode/starcoder2-3b'})\n"
            "except OSError as e:\n    print('OSERROR', type(e).__name__)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tiny_model.parent / "hf-home")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert "OSERROR" in out.stdout, out.stderr[-2000:]
    local = subprocess.run([sys.executable, "-c", "from eqflow.funsearch.samplers import make_sampler\n"
                            f"print(make_sampler({{'type': 'transformers', 'model': {str(tiny_model)!r}}}).name)"],
                           capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert local.stdout.strip() == "transformers", local.stderr[-2000:]


def test_without_the_ml_extra_the_sampler_says_which_to_install() -> None:
    code = ("import sys\nsys.modules['torch'] = None\n"
            "from eqflow.funsearch.samplers import make_sampler\n"
            "try:\n    make_sampler({'type': 'transformers', 'model': 'x'})\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "pip install 'eqflow[ml]'" in out.stdout and "torch==2.13.0" in out.stdout, out.stderr


def test_bad_parameters_are_refused(tiny_model: Path) -> None:
    with pytest.raises(ValueError, match="unknown parameter"):
        make_sampler(sampler_config(tiny_model, temprature=0.9))
    with pytest.raises(ValueError, match="needs 'model'"):
        make_sampler({"type": "transformers"})


# -- end to end -------------------------------------------------------------------------------------
def test_a_short_funsearch_run_sampling_with_the_tiny_model(queue: LocalTaskQueue, tiny_model: Path,
                                                            tmp_path: Path) -> None:
    """The FunSearch engine with a sampler pool (threads, so prompts can share a generate) that
    loads the tiny GPT-2 once and serves every sample task, and a real evaluator pool."""
    from eqflow.funsearch.engine import FunSearch

    sampler = sampler_config(tiny_model, max_batch=4, batch_window_s=0.2)
    cfg = WorkflowConfig.model_validate({
        "dbs": {"main": {"type": "url", "url": queue.url}},
        "pools": {"samplers": {"type": "local", "fn": "eqflow.funsearch.tasks:sample", "workers": 4},
                  "evaluators": {"type": "local", "fn": "eqflow.funsearch.tasks:evaluate", "workers": 1}},
        "tasks": {"sample": {"type": SAMPLE, "pools": ["samplers"]},
                  "evaluate": {"type": EVALUATE, "pools": ["evaluators"]}},
        "funsearch": {"spec": "deletion_codes", "tests": [{"n": 6, "s": 1}], "num_islands": 2,
                      "samples_per_prompt": 2, "sampler": sampler, "max_seconds": 25, "eval_timeout_s": 10,
                      "optimal_solution_programs": 10_000},
        "output_dir": str(tmp_path), "seed": 1})
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    common = ["--db", queue.url, "--lease", "20"]
    logs = (tmp_path / "samplers.log").open("wb"), (tmp_path / "evaluators.log").open("wb")
    pools = [subprocess.Popen([sys.executable, "-m", "eqflow.workers.pool", "--types", str(SAMPLE), "--fn",
                               "eqflow.funsearch.tasks:sample", "--threads", "--workers", "4", "--name", "llm",
                               *common], stdout=logs[0], stderr=subprocess.STDOUT, env=env, cwd=REPO),
             subprocess.Popen([sys.executable, "-m", "eqflow.workers.pool", "--types", str(EVALUATE), "--fn",
                               "eqflow.funsearch.tasks:evaluate", "--workers", "1", "--name", "eval", *common],
                              stdout=logs[1], stderr=subprocess.STDOUT, env=env, cwd=REPO)]
    try:
        assert wait_for(lambda: len(queue.pools(active_only=True)) == 2, 60)
        fs = FunSearch(queue, cfg, "llm", out=tmp_path / "llm", progress=False, start_pools=False)
        stop = fs.run()
    finally:
        for pool in pools:
            pool.terminate()
        for pool in pools:
            pool.wait(timeout=60)
        for handle in logs:
            handle.close()
    assert "seconds" in stop.reason or stop.finished, stop
    rows = sql(queue.url, "SELECT payload, result, pool FROM tasks WHERE exp_id = 'llm' AND task_type = %s "
                          "AND status = 'complete' ORDER BY task_id", (SAMPLE,))
    assert len(rows) >= 4, (tmp_path / "samplers.log").read_text()[-3000:]
    for payload, result, held_by in rows:
        request = json.loads(str(payload))["request"]
        answer = json.loads(str(result))
        assert str(held_by).startswith("llm-")
        assert re.search(r"\ndef priority_v\d\(el: tuple\[int, \.\.\.\], n: int, s: int\) -> float:\n$",
                         request["prompt"]), request["prompt"][-200:]
        assert "def priority_v0(" in request["prompt"]  # a parent, renamed
        assert answer["sampler"] == "transformers" and answer["model"] == str(tiny_model)
        assert len(answer["bodies"]) == 2 and answer["tokens_in"] > 0 and answer["tokens_out"] > 0
    assert fs.counters.samples_done >= 4 and fs.counters.samples_failed == 0
    candidates = sql(queue.url, "SELECT count(*) FROM fs_candidates WHERE exp_id = 'llm' AND idx >= 0")[0][0]
    assert int(str(candidates)) >= 8  # every completion recorded (parsed or not)
    assert "model loaded" in (tmp_path / "samplers.log").read_text()
