"""Dynamic scaling of FunSearch samplers and evaluators, driven by a real queue (PostgreSQL) and
real pool processes. The GPU probe is the only thing replaced (there is no GPU here); CPU, load and
RAM are measured. Covers the single- and multi-GPU start rules, holds with their reasons, the
scale-down preferences, SIGTERM then SIGKILL with tasks back in the queue, the decisions table and
the resources log."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import psutil
import pytest

from eqflow.config import WorkflowConfig
from eqflow.funsearch.scaling import (
    DynamicScaler,
    LocalPools,
    ScalingSettings,
    add_scaling_arguments,
    settings_from_args,
)
from eqflow.queue import LocalTaskQueue
from eqflow.resources import GpuState
from eqflow.workers.launchers import PoolSpec
from tests.conftest import sql, wait_for

SAMPLE, EVALUATE = 20, 21
REPO = Path(__file__).resolve().parents[1]
TYPES = {"sampler": SAMPLE, "evaluator": EVALUATE}


def work(payload: str) -> str:
    """The pools' task: {"sleep": s} waits, {"burn": s} keeps a core busy."""
    spec = json.loads(payload)
    end = time.monotonic() + float(spec.get("burn", 0))
    while time.monotonic() < end:
        pass
    time.sleep(float(spec.get("sleep", 0)))
    return payload


class Gpus:
    """The stand-in GPU probe: a list the test edits."""

    def __init__(self, *states: tuple[float, float]) -> None:
        self.states = [GpuState(i, free, util) for i, (free, util) in enumerate(states)]

    def set(self, index: int, free: float, util: float) -> None:
        self.states[index] = GpuState(index, free, util)

    def __call__(self) -> list[GpuState]:
        return list(self.states)


def pools(queue: LocalTaskQueue, tmp_path: Path, threads: bool = False) -> LocalPools:
    fn = "tests.test_funsearch_scaling:work"
    specs = {"sampler": PoolSpec([SAMPLE], fn=fn, lease=4.0, threads=threads),
             "evaluator": PoolSpec([EVALUATE], fn=fn, lease=4.0)}
    return LocalPools(specs, "sc", db_url=queue.url, log_dir=tmp_path / "pool-logs", queue=queue,
                      env={"PYTHONPATH": str(REPO)})


def settings(**overrides: object) -> ScalingSettings:
    base = {"enabled": True, "check_interval": 0, "sampler_scale_up_threshold": 5, "evaluator_scale_up_threshold": 3,
            "min_samplers": 0, "min_evaluators": 0, "min_system_memory_gib": 0.1,
            "cpu_usage_threshold": 101, "normalized_load_threshold": 1000,
            "sampler_stop_grace_s": 20, "evaluator_stop_grace_s": 20}
    return ScalingSettings.model_validate({**base, **overrides})


def submit(queue: LocalTaskQueue, task_type: int, n: int, **work_spec: float) -> list[int]:
    return [f.task_id for f in queue.submit_many("sc", task_type, [json.dumps(work_spec)] * n)]


def decisions(url: str) -> list[tuple[int, str, str, str | None]]:
    rows = sql(url, "SELECT task_type, action, reason, job_id FROM scaling_decisions ORDER BY decision_id")
    return [(int(str(t)), str(a), str(r), None if j is None else str(j)) for t, a, r, j in rows]


def cuda_env(pid: int) -> str | None:
    return psutil.Process(pid).environ().get("CUDA_VISIBLE_DEVICES")


def test_samplers_one_gpu_then_several_together_then_hold_then_stop_the_idle_one(
        queue: LocalTaskQueue, tmp_path: Path) -> None:
    gpus = Gpus((30, 5), (12, 5), (12, 5), (60, 90))  # GPU 3 has room but is busy
    control = pools(queue, tmp_path)
    scaler = DynamicScaler(queue, "sc", settings(max_samplers=3), control, task_types=TYPES, gpu_probe=gpus,
                           log_dir=tmp_path / "logs")
    try:
        submit(queue, SAMPLE, 12, sleep=60)
        first = scaler.check(force=True)[0]
        assert (first.action, first.gpus) == ("start", (0,)), first
        assert "GPU 0: 30.0 GiB free >= 20" in first.reason
        second = scaler.check(force=True)[0]  # GPU 0 is held: 1 and 2 only reach 20 GiB together
        assert (second.action, second.gpus) == ("start", (1, 2)), second
        assert "together 24.0 GiB" in second.reason
        third = scaler.check(force=True)[0]
        assert third.action == "hold" and "nor several together" in third.reason, third
        running = {p.name: p for p in control.running("sampler")}
        assert sorted(p.gpus for p in running.values()) == [(0,), (1, 2)]
        assert {cuda_env(p.pid) for p in running.values()} == {"0", "1,2"}
        assert wait_for(lambda: sql(queue.url, "SELECT count(*) FROM tasks WHERE status = 'running'")[0][0] == 2, 60)

        # Scale down: nothing queued; the sampler on GPUs 1,2 is the idle one (< 10 %).
        queue.cancel([t for t, in sql(queue.url, "SELECT task_id FROM tasks WHERE status = 'queued'")])
        gpus.set(0, 10, 70)
        gpus.set(1, 2, 4)
        gpus.set(2, 2, 3)
        stop = scaler.check(force=True)[0]
        on_12 = next(name for name, p in running.items() if p.gpus == (1, 2))
        assert (stop.action, stop.pool) == ("stop", on_12), stop
        assert "GPU 4% < 10%" in stop.reason
        proc = psutil.Process(running[on_12].pid)
        assert wait_for(lambda: not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE, 30)
        # Its task went back to the queue (SIGTERM: the pool returned it before exiting).
        assert wait_for(lambda: sql(queue.url, "SELECT count(*) FROM tasks WHERE status = 'queued'")[0][0] == 1, 10)
        assert [p.name for p in control.running("sampler")] == [n for n in running if n != on_12]
    finally:
        control.stop_all(grace_s=5)
        scaler.close()
    rows = decisions(queue.url)
    assert [(t, a, j) for t, a, _, j in rows if t == SAMPLE and a != "hold"] == [
        (SAMPLE, "start", first.pool), (SAMPLE, "start", second.pool), (SAMPLE, "stop", on_12)]
    assert any(a == "hold" and "nor several together" in r for t, a, r, _ in rows if t == SAMPLE)
    log_text = scaler.resources_log_path.read_text()
    assert scaler.resources_log_path.name == f"resources_{os.uname().nodename}_pid{os.getpid()}.log"
    assert "GPU1: 12.0 GiB free 5%" in log_text and "sampler stop:" in log_text and "load/core" in log_text
    events = [e.data["pool"] for e in queue.events("sc", kind="pool_started")]
    assert events == [first.pool, second.pool]


def test_sampler_holds_say_why(queue: LocalTaskQueue, tmp_path: Path) -> None:
    gpus = Gpus((40, 80), (8, 0))
    control = pools(queue, tmp_path)
    scaler = DynamicScaler(queue, "sc", settings(min_system_memory_gib=1e6), control, task_types=TYPES,
                           gpu_probe=gpus, log_dir=tmp_path)
    submit(queue, SAMPLE, 6)
    try:
        hold = scaler.check(force=True)[0]
        assert hold.action == "hold" and "free RAM" in hold.reason and "< 1e+06" in hold.reason
        scaler.settings = settings()
        hold = scaler.check(force=True)[0]  # GPU 0 busy, GPU 1 short of memory, alone or together
        assert hold.action == "hold" and "no GPU with 20 GiB free and < 50% busy, nor several together" in hold.reason
        assert scaler.check(force=True)[0].action == "hold"
        scaler.settings = settings(sampler_scale_up_threshold=6)
        assert "nothing to do" in scaler.check(force=True)[0].reason  # 6 queued is not > 6
        assert control.running("sampler") == []
        scaler.settings = settings(check_interval=120, sampler_scale_up_threshold=6)
        t0 = time.monotonic() + 1000
        assert scaler.check(now=t0) != []
        assert scaler.check(now=t0 + 60) == []  # not yet
        assert scaler.check(now=t0 + 121) != []
    finally:
        scaler.close()
    scaler.settings = settings(enabled=False, sampler_scale_up_threshold=0)
    assert scaler.check(force=True) == [] and control.running("sampler") == []  # --no-dynamic-scaling
    holds = [r for t, a, r, _ in decisions(queue.url) if t == SAMPLE]
    # An unchanged hold is recorded once; a changed one again.
    assert len([r for r in holds if "nor several together" in r]) == 1 and len(holds) == 3


def test_api_samplers_and_gpu_less_nodes_use_the_cpu_rule(queue: LocalTaskQueue, tmp_path: Path) -> None:
    control = pools(queue, tmp_path)
    gpus = Gpus((80, 0))
    scaler = DynamicScaler(queue, "sc", settings(samplers_need_gpu=False, min_samplers=1), control,
                           task_types=TYPES, gpu_probe=gpus, log_dir=tmp_path)
    try:
        start = scaler.check(force=True)[0]
        assert start.action == "start" and start.gpus == () and "min_samplers 1" in start.reason
        assert "CPU and RAM free" in start.reason
        assert cuda_env(control.running("sampler")[0].pid) is None
        # Default (null): GPUs when the node has any, the CPU rule on a node without.
        scaler.settings = settings(min_samplers=3, max_samplers=3)
        assert scaler.check(force=True)[0].gpus == (0,)
        gpus.states = []
        assert "CPU and RAM free" in scaler.check(force=True)[0].reason
        assert len(control.running("sampler")) == 3
    finally:
        control.stop_all(grace_s=5)
        scaler.close()


def test_evaluators_from_queue_and_cpu_and_the_idle_one_stops_first(queue: LocalTaskQueue, tmp_path: Path) -> None:
    control = pools(queue, tmp_path)
    scaler = DynamicScaler(queue, "sc", settings(min_evaluators=1, max_evaluators=3), control, task_types=TYPES,
                           gpu_probe=Gpus(), log_dir=tmp_path)
    try:
        first = [d for d in scaler.check(force=True) if d.kind == "evaluator"][0]
        assert first.action == "start" and "0 evaluators < min_evaluators 1" in first.reason
        assert "load/core" in first.reason
        submit(queue, EVALUATE, 20, sleep=0.5)
        for _ in range(2):
            assert [d for d in scaler.check(force=True) if d.kind == "evaluator"][0].action == "start"
        at_max = [d for d in scaler.check(force=True) if d.kind == "evaluator"][0]
        assert at_max.action == "hold" and "already max_evaluators 3" in at_max.reason
        # Busy load too high: no start, and the reason names the measured load.
        scaler.settings = settings(min_evaluators=1, max_evaluators=5, normalized_load_threshold=0)
        blocked = [d for d in scaler.check(force=True) if d.kind == "evaluator"][0]
        assert blocked.action == "hold" and "normalized_load_threshold 0" in blocked.reason
        scaler.settings = settings(min_evaluators=1, max_evaluators=3)
        # Drain, then two pools burn a core each and one sits idle: the idle one stops.
        assert wait_for(lambda: queue.stats("sc")[EVALUATE].get("complete", 0) == 20, 120)
        burners = submit(queue, EVALUATE, 2, burn=30)
        assert wait_for(lambda: queue.stats("sc")[EVALUATE].get("running", 0) == 2, 30)
        time.sleep(1.0)
        busy_pools = {str(p) for p, in sql(queue.url, "SELECT pool FROM tasks WHERE task_id = ANY(%s)", (burners,))}
        stop = [d for d in scaler.check(force=True) if d.kind == "evaluator"][0]
        assert stop.action == "stop", stop
        assert not any(p.startswith(f"{stop.pool}-") for p in busy_pools), (stop, busy_pools)
        assert "CPU" in stop.reason and "< 20%" in stop.reason
        assert len(control.running("evaluator")) == 2
    finally:
        control.stop_all(grace_s=5)
        scaler.close()


def test_a_pool_that_outlives_sigterm_is_killed_and_its_task_comes_back(queue: LocalTaskQueue, tmp_path: Path) -> None:
    """A sampler pool (threads) whose task is stuck in generate: SIGTERM returns the task at once,
    the stuck thread keeps the process alive, SIGKILL ends it after the grace period."""
    control = pools(queue, tmp_path, threads=True)
    [task] = submit(queue, SAMPLE, 1, sleep=120)
    name = control.start("sampler", "test")
    pid = control.running("sampler")[0].pid
    try:
        assert wait_for(lambda: queue.stats("sc")[SAMPLE].get("running", 0) == 1, 60)
        started = time.monotonic()
        control.stop(name, grace_s=2.0)
        assert control.running("sampler") == []
        assert wait_for(lambda: sql(queue.url, "SELECT status FROM tasks WHERE task_id = %s", (task,))[0][0]
                        == "queued", 15)
        proc = psutil.Process(pid)
        assert wait_for(lambda: not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE, 30)
        assert 2.0 <= time.monotonic() - started < 20
        assert wait_for(lambda: any(e.data.get("how") == "killed" for e in queue.events("sc", kind="pool_stopped")),
                        10)
    finally:
        control.stop_all(grace_s=1)


def test_cli_flags_override_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_scaling_arguments(parser)
    base = ScalingSettings()
    assert (base.check_interval, base.sampler_scale_up_threshold, base.evaluator_scale_up_threshold,
            base.min_gpu_memory_gib, base.max_gpu_utilization, base.min_system_memory_gib, base.cpu_usage_threshold,
            base.normalized_load_threshold) == (120, 50, 10, 20, 50, 30, 99, 0.99)  # the reference's defaults
    args = parser.parse_args(["--dynamic-scaling", "--check-interval", "5", "--max-samplers", "2",
                              "--min-evaluators", "0"])
    out = settings_from_args(base, args)
    assert (out.enabled, out.check_interval, out.max_samplers, out.min_evaluators, out.max_evaluators) == (
        True, 5, 2, 0, 1000)
    assert not settings_from_args(out, parser.parse_args(["--no-dynamic-scaling"])).enabled
    assert settings_from_args(base, parser.parse_args([])) == base
    with pytest.raises(ValueError, match="min_samplers"):
        settings_from_args(base, parser.parse_args(["--max-samplers", "0"]))


def test_pools_from_a_funsearch_config(queue: LocalTaskQueue, tmp_path: Path) -> None:
    cfg = WorkflowConfig.model_validate({
        "dbs": {"main": {"type": "url", "url": queue.url}},
        "pools": {"samplers": {"type": "local", "fn": "eqflow.funsearch.tasks:sample", "workers": 4},
                  "evaluators": {"type": "local", "fn": "eqflow.funsearch.tasks:evaluate", "workers": 2}},
        "tasks": {"sample": {"type": SAMPLE, "pools": ["samplers"]},
                  "evaluate": {"type": EVALUATE, "pools": ["evaluators"]}},
        "funsearch": {"spec": "deletion_codes"}, "output_dir": str(tmp_path)})
    control = LocalPools.from_config(cfg, "fs", queue, tmp_path)
    sampler, evaluator = control.specs["sampler"], control.specs["evaluator"]
    assert (sampler.task_types, sampler.fn, sampler.workers) == ([SAMPLE], "eqflow.funsearch.tasks:sample", 4)
    assert (evaluator.task_types, evaluator.fn, evaluator.workers) == ([EVALUATE], "eqflow.funsearch.tasks:evaluate", 2)
    assert control.db_url == queue.url
