"""Globus Compute with the real SDK, as far as it goes without the Globus cloud.

Only the cloud and the endpoint's process pool are stood in for, by ``ComputeSubprocessExecutor``:
every call is serialized by the SDK's own ``ComputeSerializer`` (as ``Executor.submit`` does),
sent to a fresh interpreter (this venv's python, started in an empty folder) that unpacks and
runs it as the endpoint's ``execute_task`` does, and its result comes back the same way. The
GCTaskQueue conformance suite and ExecutorLauncher start/status/cancel run through it; the
config path builds the SDK's real ``Executor``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("globus_compute_sdk", reason="globus-compute-sdk is not installed: pip install 'eqflow[globus]'")

from globus_compute_sdk.errors import SerializationError, TaskExecutionFailed  # noqa: E402
from globus_compute_sdk.serialize import ComputeSerializer  # noqa: E402

from eqflow import PayloadTooLarge, as_completed  # noqa: E402
from eqflow import gc_queue as gc_queue_module  # noqa: E402
from eqflow.errors import ConfigError  # noqa: E402
from eqflow.gc_queue import GC_MAX_PAYLOAD_BYTES, GCTaskQueue  # noqa: E402
from eqflow.task_queues import make_task_queue  # noqa: E402
from eqflow.workers.launchers import ExecutorLauncher, JobSpec, JobState, PoolSpec, wait  # noqa: E402
from tests import test_conformance  # noqa: E402
from tests.test_launchers import slurm_job, stand_in_pbs  # noqa: E402 - the slurm fixture comes from conftest

# Globus Compute's data limit: a task's serialized input, and its serialized result (the
# endpoint's default result_size_limit), may each be 10 MB.
GC_LIMIT_BYTES = 10 * 1024 * 1024

# What the endpoint's worker does with a task buffer (globus_compute_endpoint.engines.helper):
# unpack_and_deserialize -> call -> serialize the result, failing over the size limit.
ENDPOINT_SIDE = textwrap.dedent("""
    import sys, traceback
    from globus_compute_sdk.errors import MaxResultSizeExceeded
    from globus_compute_sdk.serialize import ComputeSerializer
    serde = ComputeSerializer()
    buffer = sys.stdin.read()
    try:
        fn, args, kwargs = serde.unpack_and_deserialize(buffer)
        out = "result\\n" + serde.serialize(fn(*args, **kwargs))
        if len(out) > LIMIT:
            raise MaxResultSizeExceeded(len(out), LIMIT)
    except Exception:
        out = "error\\n" + traceback.format_exc()
    with open(sys.argv[1], "w") as answer:
        answer.write(out)
""")


class ComputeSubprocessExecutor(Executor):
    """Stands in for the Globus cloud and an endpoint, behind the same Executor interface.

    ``submit`` serializes in the caller, so a function or argument the SDK cannot serialize
    fails there, as with the SDK. A remote exception comes back as the SDK's
    TaskExecutionFailed carrying the remote traceback.
    """

    def __init__(self, max_workers: int = 8, timeout: float = 120.0) -> None:
        self.serde = ComputeSerializer()
        self.timeout = timeout
        self.calls = 0
        self.functions: list[str] = []
        self._threads = ThreadPoolExecutor(max_workers, thread_name_prefix="gc-endpoint")
        self._lock = threading.Lock()
        self._workdir = tempfile.TemporaryDirectory(prefix="eqflow-gc-endpoint-")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:  # type: ignore[override]
        buffer = self.serde.pack_buffers([self.serde.serialize(fn), self.serde.serialize(args),
                                          self.serde.serialize(kwargs)])
        if len(buffer) > GC_LIMIT_BYTES:
            raise ValueError(f"task of {len(buffer)} B is over Globus Compute's {GC_LIMIT_BYTES} B limit")
        with self._lock:
            self.calls += 1
            self.functions.append(f"{fn.__module__}.{fn.__qualname__}")
        return self._threads.submit(self._run, buffer)

    def _run(self, buffer: str) -> Any:
        with tempfile.NamedTemporaryFile("r", dir=self._workdir.name, suffix=".answer") as answer:
            proc = subprocess.run([sys.executable, "-c", ENDPOINT_SIDE.replace("LIMIT", str(GC_LIMIT_BYTES)),
                                   answer.name], input=buffer, capture_output=True, text=True,
                                  cwd=self._workdir.name, timeout=self.timeout)
            text = answer.read()
        if proc.returncode != 0 or not text:
            raise RuntimeError(f"endpoint interpreter exited {proc.returncode}: {proc.stderr[-4000:]}")
        kind, payload = text.split("\n", 1)
        if kind == "error":
            raise TaskExecutionFailed(payload)
        return self.serde.deserialize(payload)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._threads.shutdown(wait, cancel_futures=cancel_futures)
        self._workdir.cleanup()


def _raise_in_remote(message: str) -> None:
    raise RuntimeError(message)


def test_the_stand_in_runs_in_a_fresh_interpreter_and_is_as_strict_as_the_sdk():
    with ComputeSubprocessExecutor(2) as executor:
        assert executor.submit(os.getpid).result(timeout=60) != os.getpid()
        assert executor.submit(sorted, [3, 1, 2], reverse=True).result(timeout=60) == [3, 2, 1]
        with pytest.raises(TaskExecutionFailed, match="JSONDecodeError"):  # a remote exception comes back
            executor.submit(json.loads, "{not json").result(timeout=60)
        # Module-level functions travel by reference: one the endpoint cannot import fails there.
        with pytest.raises(TaskExecutionFailed, match="No module named 'test_globus_sdk'"):
            executor.submit(_raise_in_remote, "never runs").result(timeout=60)
        with socket.socket() as sock, pytest.raises(SerializationError):  # no connection crosses the wire
            executor.submit(sock.getsockname)
        assert executor.calls == 4  # the refused one never left


# -- the task queue through the SDK's serializer ---------------------------------------------------
@pytest.fixture()
def tq(db_url: str) -> Iterator[GCTaskQueue]:
    """The conformance suite's queue: GCTaskQueue through the serializing executor."""
    with ComputeSubprocessExecutor(8) as executor:
        queue = GCTaskQueue(executor, db_url)
        yield queue
        queue.close()
        assert executor.calls > 0 and set(executor.functions) == {"eqflow.gc_queue.gc_run_op"}
    # (other test files run GCTaskQueue on a thread executor in this process, for their own databases)
    assert db_url not in gc_queue_module._queues, "a queue operation ran in the test process, not on the endpoint"


# Every test of tests/test_conformance.py that takes the ``tq`` fixture runs here with the one above.
for _name, _test in inspect.getmembers(test_conformance, inspect.isfunction):
    if _name.startswith("test_") and "tq" in inspect.signature(_test).parameters:
        globals()[_name] = _test


def test_payload_limits_fit_globus_computes_10_mb(tq):
    big = "x" * (GC_MAX_PAYLOAD_BYTES - 64)
    [fut] = tq.submit_many("gc-big", 21, [big])
    [task] = tq.claim(21, pool="p")
    assert task.payload == big  # 7 MiB out through a serialized result ...
    tq.report([(task, big)])  # ... and back in through serialized arguments
    assert fut.result(timeout=60) == big
    with pytest.raises(PayloadTooLarge):  # refused here, before it could fail in the cloud
        tq.submit("gc-big", 21, "x" * (GC_MAX_PAYLOAD_BYTES + 1))


# -- remote pool launch through the SDK's serializer -----------------------------------------------
def test_executor_launcher_start_status_cancel_through_the_serializer(tmp_path):
    bin_dir, calls = stand_in_pbs(tmp_path, "88.pbs01")
    job = JobSpec(nodes=1, ppn=2, walltime="00:05:00", queue="workq", output_dir=str(tmp_path / "jobs"))
    with ComputeSubprocessExecutor(1) as executor:
        remote = ExecutorLauncher(executor, "pbs", job, bin_dir=str(bin_dir), timeout=120)
        job_id = remote.start(PoolSpec([1], fn="eqflow.workers.tasks:noop", name="gc-pbs"))
        assert job_id == "88.pbs01"
        assert remote.status(job_id) is JobState.RUNNING
        remote.cancel(job_id)
        assert executor.functions == ["eqflow.workers.launchers.remote_start", "eqflow.workers.launchers.remote_status",
                                      "eqflow.workers.launchers.remote_cancel"]
    log = calls.read_text().splitlines()
    assert [line.split()[0] for line in log] == ["qsub", "qstat", "qdel"] and log[2] == "qdel 88.pbs01"
    [script] = (tmp_path / "jobs").glob("*.qsub")  # written on the "login node" by the remote launcher
    assert "#PBS -l select=1:ncpus=2" in script.read_text() and "--name gc-pbs" in script.read_text()


@pytest.mark.slow
def test_remote_slurm_pool_runs_tasks_through_the_serializer(slurm, queue, db_url, tmp_path):  # noqa: F811
    with ComputeSubprocessExecutor(1) as executor:
        remote = ExecutorLauncher(executor, "slurm", slurm_job(tmp_path))
        futs = queue.submit_many("gc-slurm", 4, [json.dumps({"seconds": 0})] * 3)
        job = remote.start(PoolSpec([4], fn="eqflow.workers.tasks:sleep", idle_exit=2, db_url=db_url))
        assert job.isdigit()
        assert len(list(as_completed(futs, timeout=120))) == 3
        assert wait(remote, job, timeout=120) is JobState.DONE, slurm.log_tail()
        assert executor.calls >= 2


# -- the config path builds the SDK's own Executor -------------------------------------------------
CONFIG_PATH = textwrap.dedent("""
    import sys
    from eqflow.errors import ConfigError
    from eqflow.task_queues import make_task_queue
    try:
        queue = make_task_queue("gc", {"type": "globus", "endpoint": sys.argv[1], "db": None})
    except ConfigError as exc:
        print("=> ConfigError:", exc, "| caused by", type(exc.__cause__.__cause__).__name__)
    else:
        print("=> built", type(queue).__name__, type(queue.executor).__module__, queue.executor.endpoint_id)
""")

LAZY_CLIENT = textwrap.dedent("""
    import sys
    from globus_compute_sdk import Client
    from eqflow.gc_queue import GCTaskQueue
    from eqflow.globus import globus_executor
    executor = globus_executor(sys.argv[1], client=Client(do_version_check=False))
    print("=> built", type(executor).__module__, executor.endpoint_id, flush=True)
    try:
        GCTaskQueue(executor).open_count()
    except Exception as exc:
        print("=> first call:", type(exc).__name__, exc)
""")


def _fresh_sdk_process(code: str, endpoint: str, home: Path, **env: str) -> list[str]:
    """Run ``code`` in a new interpreter with no Globus tokens (an empty HOME) and no terminal;
    the lines it marked with "=> " (the SDK prints its login prompt on stdout too)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GLOBUS_", "FUNCX_"))}
    clean.update(HOME=str(home), GLOBUS_COMPUTE_USER_DIR=str(home / ".globus_compute"), **env)
    proc = subprocess.run([sys.executable, "-c", code, endpoint], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, env=clean, cwd=home, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return re.findall(r"=> (.*)", proc.stdout) or [proc.stdout]


def test_config_path_checks_the_endpoint_id_before_asking_the_sdk():
    with pytest.raises(ConfigError, match=r"task_queues\.gc: a Globus Compute endpoint id is a UUID, got 'my-ep'"):
        make_task_queue("gc", {"type": "globus", "endpoint": "my-ep"})


def test_config_path_builds_the_sdk_executor_and_says_what_it_needs(tmp_path):
    """What ``globus_compute_sdk.Executor(endpoint_id=...)`` (SDK 4.x) does when built offline:

    * without a login (no tokens, no client credentials) its ``Client()`` starts the command-line
      login before its version check; with stdin not a terminal that is an EOFError at once
      (on a terminal it would print a URL and wait). eqflow says how to log in;
    * with client credentials (GLOBUS_COMPUTE_CLIENT_ID/SECRET) it asks auth.globus.org for a
      token: offline that is a network error after the SDK's retries (about 15 s), online a
      refusal of the made-up credentials; either way a ConfigError naming the queue;
    * with a ``Client(do_version_check=False)`` the Executor is built without any request; the
      first call (the function's registration in ``submit``) then needs the login and fails the
      same way, as a ConfigError from GCTaskQueue.
    """
    endpoint = str(uuid.uuid4())
    [out] = _fresh_sdk_process(CONFIG_PATH, endpoint, tmp_path)
    assert out.startswith("ConfigError: task_queues.gc: Globus Compute needs a Globus login"), out
    assert out.endswith("caused by CommandLineLoginFlowEOFError")

    [out] = _fresh_sdk_process(CONFIG_PATH, endpoint, tmp_path, GLOBUS_COMPUTE_CLIENT_ID=str(uuid.uuid4()),
                             GLOBUS_COMPUTE_CLIENT_SECRET="not-a-secret")
    assert out.startswith(("ConfigError: task_queues.gc: cannot reach Globus Compute",
                           "ConfigError: task_queues.gc: Globus refused")), out

    built, first_call = _fresh_sdk_process(LAZY_CLIENT, endpoint, tmp_path)
    assert built == f"built globus_compute_sdk.sdk.executor {endpoint}"
    assert first_call.startswith("first call: ConfigError Globus Compute needs a Globus login"), first_call
