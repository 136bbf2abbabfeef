"""The scaling controller, driven by a real queue and real pool processes."""

import json

from eqflow.resources import GpuState, ResourceProbe
from eqflow.scaling import ScalingConfig, ScalingController, TypeScaling
from eqflow.workers.launchers import PoolSpec
from tests.conftest import sql, wait_for


def permissive(types, **kw):
    return ScalingConfig(types, check_interval=0.2, cpu_usage_threshold=101, normalized_load_threshold=1e9,
                         min_system_memory_gib=0, **kw)




def test_backlog_grows_pools_to_max_then_empty_queue_shrinks_to_min(queue, db_url):
    spec = PoolSpec([0], fn="eqflow.workers.tasks:sleep", workers=1, db_url=db_url, name="auto")
    controller = ScalingController(queue, permissive([TypeScaling(11, spec, min_pools=1, max_pools=3,
                                                                  scale_up_queued=2)]))
    futs = queue.submit_many("scale", 11, [json.dumps({"seconds": 0.2})] * 40)
    try:
        actions = [controller.step()[0] for _ in range(4)]
        assert [a.action for a in actions] == ["start", "start", "start", "hold"]
        assert "pools < min 1" in actions[0].reason and "at max 3" in actions[3].reason
        assert wait_for(lambda: len(queue.pools(active_only=True)) == 3)
        assert wait_for(lambda: all(f.done() for f in futs), timeout=120)
        stops = [controller.step()[0] for _ in range(3)]
        assert [s.action for s in stops][:2] == ["stop", "stop"]
        assert stops[2].action == "hold"  # at min: one pool stays
        assert wait_for(lambda: len(queue.pools(active_only=True)) == 1)
        logged = [r[2] for r in controller.recent()]
        assert logged.count("start") == 3 and logged.count("stop") == 2
        assert {r[0] for r in sql(db_url, "SELECT count(DISTINCT pool) FROM tasks")} == {3}
    finally:
        controller.shutdown()
    assert wait_for(lambda: not queue.pools(active_only=True))


def test_busy_cpu_holds_with_its_reason(queue, db_url):
    spec = PoolSpec([0], fn="eqflow.workers.tasks:noop", db_url=db_url)
    config = ScalingConfig([TypeScaling(12, spec, max_pools=2)], cpu_usage_threshold=0.0,
                           normalized_load_threshold=1e9, min_system_memory_gib=0)
    queue.submit_many("scale", 12, ["x"] * 5)
    [decision] = ScalingController(queue, config).step()
    assert decision.action == "hold" and "CPU" in decision.reason
    config.cpu_usage_threshold, config.min_system_memory_gib = 101, 1e6
    [decision] = ScalingController(queue, config).step()
    assert decision.action == "hold" and "free RAM" in decision.reason


class GpuProbe(ResourceProbe):
    """Real CPU/RAM probes; only the GPUs are stood in for (no GPU on this machine)."""

    def __init__(self, gpus):
        super().__init__()
        self.states = gpus

    def gpus(self):
        return self.states


def test_gpu_types_need_a_free_gpu(queue, db_url):
    spec = PoolSpec([0], fn="eqflow.workers.tasks:noop", db_url=db_url)
    scaling = TypeScaling(13, spec, max_pools=1, gpu=True, min_gpu_memory_gib=8, max_gpu_utilization=50)
    queue.submit_many("scale", 13, ["x"] * 5)
    probe = GpuProbe([GpuState(0, 4.0, 10.0), GpuState(1, 20.0, 90.0)])
    controller = ScalingController(queue, permissive([scaling]), probe)
    try:
        [held] = controller.step()
        assert held.action == "hold" and "no GPU with >= 8 GiB free" in held.reason
        probe.states = [GpuState(0, 12.0, 10.0)]
        [started] = controller.step()
        assert started.action == "start" and started.job_id
    finally:
        controller.shutdown()
