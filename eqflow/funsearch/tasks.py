"""What FunSearch's pools run: ``sample`` (a prompt in, candidate bodies out) and ``evaluate`` (a
candidate body in, per-test scores out, from a sandboxed process).

Pool configs name them as ``fn: "eqflow.funsearch.tasks:sample"`` and ``...:evaluate``. Pool
worker processes are long-lived, so a sampler (an LLM's weights) and a sandbox (the spec loaded,
its per-test structures built) are made once per worker and reused.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from eqflow.funsearch.samplers import SampleRequest, make_sampler

log = logging.getLogger("eqflow.funsearch")

_sandboxes: dict[tuple[str, str, str], Any] = {}


def sample(payload: str) -> str:
    task = json.loads(payload)
    request = SampleRequest(**task["request"])
    started = time.monotonic()
    sampler = make_sampler(task["sampler"])
    result = sampler.sample(request)
    return json.dumps({
        "bodies": result.bodies, "tokens_in": result.tokens_in, "tokens_out": result.tokens_out,
        "seconds": result.seconds or time.monotonic() - started, "gpu_seconds": result.gpu_seconds,
        "cost_usd": result.cost_usd, "model": result.model, "sampler": sampler.name,
        "sandbox_runs": result.sandbox_runs})


def evaluate(payload: str) -> str:
    task = json.loads(payload)
    sandbox = _sandbox(task["spec_name"], task["spec"], task["tests"], task["limits"])
    return json.dumps(sandbox.evaluate(task["body"]).to_json())


def _sandbox(name: str, text: str, tests: list[dict[str, Any]], limits: dict[str, Any]) -> Any:
    from eqflow.funsearch.sandbox import Limits, Sandbox
    from eqflow.funsearch.spec import Spec

    spec = Spec.from_text(text, name)
    key = (spec.sha256, json.dumps(tests, sort_keys=True), json.dumps(limits, sort_keys=True))
    sandbox = _sandboxes.get(key)
    if sandbox is None:
        for old in _sandboxes.values():  # one spec per worker at a time: free the last one's server
            old.close()
        _sandboxes.clear()
        sandbox = _sandboxes[key] = Sandbox(spec, tests, Limits(**limits))
        log.info("sandbox ready", extra={"spec": name, "isolation": sandbox.isolation})
    return sandbox
