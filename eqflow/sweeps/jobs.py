"""The task functions pool workers run for sweeps: one grid/binary-search job per task."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from eqflow.sweeps import refs

OUTPUT_LOG = "experiment_output.log"


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so child processes'
    output too) to ``path`` (appended) for the duration."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def run_gpu_job(payload: str) -> str:
    """Payload: JSON with the search config and experiment config (pickles), the job's folder
    and the driver script. Runs ``search.run_experiment_config(config)`` with its output in
    ``{base_dir}/experiment_output.log``. A job that raises is a result too (ok false, with the
    traceback): the search goes on without running it again."""
    spec = json.loads(payload)
    out_file = Path(spec["base_dir"]) / OUTPUT_LOG
    envelope: dict[str, object] = {"gpu_id": os.environ.get("CUDA_VISIBLE_DEVICES"), "out_file": str(out_file),
                                   "pid": os.getpid()}
    with output_to(out_file):
        try:
            refs.extend_path(spec.get("path"))
            search = refs.loads(spec["search"], spec.get("script"))
            config = refs.loads(spec["config"], spec.get("script"))
            result = search.run_experiment_config(config)
            envelope.update(ok=True, result=refs.dumps(result))
        except BaseException:  # the job's own error: reported, never fatal to the worker
            text = traceback.format_exc()
            print(text, file=sys.stderr)
            envelope.update(ok=False, error=text)
        finally:
            _release_gpu_memory()
    return json.dumps(envelope)


def _release_gpu_memory() -> None:
    """Workers are long-lived (a job does not start a process, unlike the reference): give back
    the GPU memory a finished job's tensors left in torch's cache, so the next job on this slot
    starts with the device as free as a fresh process would find it."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_initialized():
            import gc

            gc.collect()
            torch.cuda.empty_cache()
    except Exception:  # a broken CUDA runtime is the next job's problem, reported there
        pass
