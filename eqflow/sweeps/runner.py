"""Grid and binary searches on GPU slots (the Runner's API) as eqflow tasks.

Every job is a task of type ``JOB_TASK_TYPE``; the driver starts one GPU pool
(``simultaneous_jobs_per_gpu`` workers per GPU), submits each search's jobs (a binary search's
round at once, for every search at once) and waits on completions. After each round a search's
state (range, round, results so far, the task ids in flight) is one row in ``sweep_searches``:
run the same searches again after a crash and each one resumes where it was, re-attaching to
the round in flight instead of submitting it again.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import os
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eqflow.models import TaskStatus
from eqflow.queue import LocalTaskQueue
from eqflow.sweeps import refs
from eqflow.sweeps.config import BinarySearchConfig, GridSearchConfig, InvalidConfigurationError
from eqflow.sweeps.gpus import GPUJob, GPUJobResult, visible_gpus
from eqflow.sweeps.pools import SweepPools
from eqflow.workers.launchers import PoolSpec
from eqflow.workflows.runkit import Progress

log = logging.getLogger("eqflow.sweeps")

JOB_TASK_TYPE = 9100
JOB_FN = "eqflow.sweeps.jobs:run_gpu_job"


def _props_product(sweep_props: dict[str, list[Any]] | None) -> list[dict[str, Any]]:
    if not sweep_props:
        return [{}]
    names = list(sweep_props)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(sweep_props[n] for n in names))]


def search_exp_id(kind: str, config: Any) -> str:
    """A search's identity: its class and its field values. Running the same search again finds
    its state; changing any field makes it a new search."""
    text = f"{type(config).__module__}.{type(config).__qualname__}|{config!r}"
    return f"sweep-{kind}-{hashlib.sha1(text.encode()).hexdigest()[:16]}"


@dataclass
class _Search:
    kind: str
    config: Any
    exp_id: str
    state: dict[str, Any]
    finished: bool = False
    pending: dict[int, int] = field(default_factory=dict)  # task id -> job index in the round
    outcomes: dict[int, GPUJobResult] = field(default_factory=dict)  # job index -> result
    jobs: list[GPUJob] = field(default_factory=list)
    outcome: Any = None

    # -- the algorithm --------------------------------------------------------------------
    def jobs_left(self) -> int:
        """Jobs this search has still to run (for the progress display)."""
        per_round = len(_props_product(self.config.sweep_props))
        if self.finished:
            return 0
        if self.kind == "grid":
            return 0 if self.state.get("done") else per_round
        rounds, width = 0, self.state["hi"] - self.state["lo"]
        while width > self.config.precision:
            rounds, width = rounds + 1, width / 2
        return rounds * per_round

    def next_round(self) -> list[dict[str, Any]] | None:
        """The props of the next round's jobs, or None when the search is over."""
        if self.kind == "grid":
            return None if self.state.get("done") else _props_product(self.config.sweep_props)
        lo, hi = self.state["lo"], self.state["hi"]
        if not hi - lo > self.config.precision:
            return None
        mid = (lo + hi) / 2
        self.state["probe"] = mid
        return [{self.config.prop: mid, **props} for props in _props_product(self.config.sweep_props)]

    def finish_round(self, results: list[GPUJobResult]) -> None:
        st = self.state
        errors = [r for r in results if r.success is None]
        if self.kind == "grid":
            aggregated = self.config.agg_results(results)
            st.update(done=True, results=refs.dumps(results), aggregated=refs.dumps(aggregated),
                      n_errors=len(errors))
            return
        mid = st["probe"]
        success, aggregated = self.config.agg_results(results)
        if errors:
            st["errors"].append(refs.dumps((mid, errors)))
        lower = self.config.success_direction_lower
        if success:
            st["achieved"] = refs.dumps((mid, aggregated))
            st["hi" if lower else "lo"] = mid
        else:
            st["failed"] = refs.dumps((mid, aggregated))
            st["lo" if lower else "hi"] = mid
        st["rounds"].append({"round": st["round"], "value": mid, "success": bool(success), "jobs": len(results),
                             "errors": len(errors), "lo": st["lo"], "hi": st["hi"]})
        st["round"] += 1

    # -- outputs --------------------------------------------------------------------------
    def results_data(self) -> dict[str, Any]:
        """What the results pickle holds (and, as ``outcome``, what the run returns)."""
        st = self.state
        if self.kind == "grid":
            aggregated = _maybe(st["aggregated"])
            self.outcome = aggregated
            return {"results": _maybe(st["results"]), "aggregated_results": aggregated,
                    "sweep_props": self.config.sweep_props, "total_time": st.get("elapsed_s", 0.0)}
        achieved, failed = _maybe(st["achieved"]), _maybe(st["failed"])
        self.outcome = (achieved, failed)
        return {"search_range": (st["lo"], st["hi"]), "precision": self.config.precision,
                "achieved_results": achieved, "failed_results": failed,
                "error_results": [refs.loads(e, refs.main_path()) for e in st["errors"]],
                "rounds": st["rounds"], "total_time": st.get("elapsed_s", 0.0)}

    def write_outputs(self) -> Any:
        base = Path(self.config.base_dir)
        base.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d_%H%M%S")
        data = {**self.results_data(), "timestamp": stamp}
        path = base / f"{self.kind}_search_results_{stamp}.pkl"
        rows = [_job_row(r) for r in data["results"]] if self.kind == "grid" else data["rounds"]
        _write_csv(path.with_suffix(".csv"), rows)
        with open(path, "wb") as handle:
            pickle.dump(data, handle)
        self.state["outputs"] = str(path)
        log.info("search finished", extra={"search": self.exp_id, "results": str(path)})
        return self.outcome


def _maybe(text: str | None) -> Any:
    return None if text is None else refs.loads(text, refs.main_path())


def _last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else ""


def _job_row(r: GPUJobResult) -> dict[str, Any]:
    return {**{f"prop_{k}": v for k, v in r.job.props.items()}, "success": r.success, "gpu_id": r.gpu_id,
            "result": repr(r.result), "error": _last_line(r.error), "out_file": r.out_file,
            "base_dir": r.job.base_dir}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def _fresh_state(kind: str, config: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"inflight": [], "elapsed_s": 0.0}
    if kind == "binary":
        lo, hi = config.range
        state.update(lo=float(lo), hi=float(hi), round=0, rounds=[], achieved=None, failed=None, errors=[])
    return state


class SearchDriver:
    """Runs many searches at once on shared pools; see the module docstring."""

    def __init__(self, kind: str, configs: Sequence[Any], max_gpus: int | None, jobs_per_gpu: int | None, *,
                 db_url: str | None, start_pools: bool, resume: bool, task_type: int,
                 poll_s: float, progress: bool = True) -> None:
        expected = GridSearchConfig if kind == "grid" else BinarySearchConfig
        for config in configs:
            if not isinstance(config, expected):
                raise InvalidConfigurationError(f"run_{kind}_searches takes {expected.__name__} instances, "
                                                f"got {type(config).__name__}")
            config.finalize()
            if not config.base_dir:
                raise InvalidConfigurationError(f"{type(config).__name__}.base_dir is required")
        ids = [search_exp_id(kind, c) for c in configs]
        if len(set(ids)) < len(ids):
            raise InvalidConfigurationError(f"the same {kind} search is given twice (equal configs)")
        self.kind, self.configs = kind, list(configs)
        self.max_gpus, self.jobs_per_gpu = max_gpus, jobs_per_gpu
        self.queue = LocalTaskQueue(db_url)
        self.start_pools, self.resume, self.task_type, self.poll_s = start_pools, resume, task_type, poll_s
        self.progress = progress
        self.errors = 0  # jobs that raised or were lost, in this run
        self.pools = SweepPools(self.queue.url)
        self.script = refs.main_path()
        self.path = refs.driver_path()

    # -- state ----------------------------------------------------------------------------
    def _load(self, config: Any) -> _Search:
        exp_id = search_exp_id(self.kind, config)
        if not self.resume:
            self.queue.db.execute("sweep_search_delete", {"exp_id": exp_id})
        fresh = _fresh_state(self.kind, config)
        self.queue.db.execute("sweep_search_create", {"exp_id": exp_id, "kind": self.kind,
                                                       "base_dir": str(config.base_dir), "state": json.dumps(fresh)})
        row = self.queue.db.fetch_one("sweep_search_get", {"exp_id": exp_id})
        assert row is not None
        search = _Search(self.kind, config, exp_id, row[2], finished=row[3] == "finished")
        if search.state.get("round") or search.state.get("inflight") or search.finished:
            log.info("search resumed", extra={"search": exp_id, "state": {k: search.state.get(k) for k in
                                                                          ("lo", "hi", "round", "done")}})
        return search

    def _save(self, search: _Search) -> None:
        self.queue.db.execute("sweep_search_save", {"exp_id": search.exp_id, "state": json.dumps(search.state),
                                                     "status": "finished" if search.finished else "running"})

    # -- jobs -----------------------------------------------------------------------------
    def _jobs(self, search: _Search, props_list: list[dict[str, Any]]) -> list[GPUJob]:
        jobs = []
        for props in props_list:
            config, base_dir = search.config._get_experiment_config_and_base_dir(**props)
            jobs.append(GPUJob(config, base_dir, props))
        return jobs

    def _submit(self, search: _Search) -> bool:
        """Submit the search's next round (or re-attach to the round in flight); False when over."""
        inflight = search.state.get("inflight") or []
        props_list = search.state.get("inflight_props") if inflight else search.next_round()
        if props_list is None:
            return False
        search.jobs = self._jobs(search, props_list)
        search.outcomes = {}
        if not inflight:
            payloads = [json.dumps({"search": refs.dumps(search.config), "config": refs.dumps(job.config),
                                    "base_dir": job.base_dir, "script": self.script, "path": self.path})
                        for job in search.jobs]
            futures = self.queue.submit_many(search.exp_id, self.task_type, payloads, tag=search.kind)
            inflight = [f.task_id for f in futures]
            search.state.update(inflight=inflight, inflight_props=props_list)
            self._save(search)
        search.pending = {tid: i for i, tid in enumerate(inflight)}
        return True

    def _settle(self, search: _Search, task_id: int, status: str, result: str | None, error: str | None) -> None:
        index = search.pending.pop(task_id)
        job = search.jobs[index]
        if status == TaskStatus.COMPLETE.value and result is not None:
            env = json.loads(result)
            if env.get("ok"):
                outcome = GPUJobResult(True, None, env.get("gpu_id"), env.get("out_file"), job,
                                       refs.loads(env["result"], self.script))
            else:
                outcome = GPUJobResult(None, env.get("error"), env.get("gpu_id"), env.get("out_file"), job)
        else:  # failed for good (its worker lost max_attempts times) or canceled
            outcome = GPUJobResult(None, error or f"task {status}", None, None, job)
        search.outcomes[index] = outcome
        self.errors += outcome.success is None

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> list[Any]:
        started = time.monotonic()
        self.queue.rescue_expired()  # a killed driver's pool may have left expired leases
        searches = [self._load(c) for c in self.configs]
        watch = self.queue.watch_completions({s.exp_id for s in searches})
        total = sum(s.jobs_left() for s in searches)
        bar = Progress(total, f"{self.kind} searches", enabled=self.progress and total > 0, interval=10.0)
        done = 0
        try:
            active = [s for s in searches if not s.finished and self._submit(s)]
            for s in searches:
                if s.finished:  # finished in an earlier run: its results, nothing run again
                    s.results_data()
                    log.info("search already finished", extra={"search": s.exp_id, "results": s.state.get("outputs")})
                elif s not in active:
                    self._finish(s, started)
            if active and self.start_pools:
                self._start_pools()
            while active:
                pending = {tid: s for s in active for tid in s.pending}
                rows = watch.finished(pending, self.poll_s)  # type: ignore[arg-type]
                for task_id, status, result, error, _pool in rows:
                    search = pending.get(task_id)
                    if search is None or task_id not in search.pending:
                        continue
                    self._settle(search, task_id, status, result, error)
                    done += 1
                    if not search.pending:
                        self._round_done(search, started)
                        watch.candidates = None  # new tasks: look at everything next time
                active = [s for s in active if s.pending]
                left = sum(len(s.pending) + s.jobs_left() for s in active)
                bar.total = max(bar.total, done + left)
                if bar.bar is not None:
                    bar.bar.total = bar.total
                bar.update(done, searches_left=len(active), errors=self.errors)
                if active and self.start_pools:
                    self.pools.revive()
        finally:
            bar.close()
            watch.close()
            self.pools.stop()
            self.queue.close()
        return [s.outcome for s in searches]

    def _round_done(self, search: _Search, started: float) -> None:
        results = [search.outcomes[i] for i in range(len(search.jobs))]
        search.finish_round(results)
        search.state.update(inflight=[], inflight_props=None)
        if search.kind == "binary":
            r = search.state["rounds"][-1]
            log.info("binary search round", extra={"search": search.exp_id, **r})
            self.queue.record_event(search.exp_id, "progress", {
                "done": r["round"] + 1, "target": r["round"] + 1 + search.jobs_left() // max(1, len(search.jobs)),
                "lo": r["lo"], "hi": r["hi"], "errors": r["errors"]})
        if not self._submit(search):
            self._finish(search, started)
        else:
            self._save(search)

    def _finish(self, search: _Search, started: float) -> None:
        total = search.state.get("elapsed_s", 0.0) + time.monotonic() - started
        search.state["elapsed_s"] = total
        search.finished = True
        search.write_outputs()
        self._save(search)

    def _start_pools(self) -> None:
        gpus = visible_gpus(self.max_gpus)
        per_gpu = self.jobs_per_gpu or 1
        if per_gpu < 1:
            raise ValueError(f"simultaneous_jobs_per_gpu must be >= 1, got {per_gpu}")
        name = f"sweep-{self.kind}"
        if gpus:
            spec = PoolSpec([self.task_type], fn=JOB_FN, name=name, gpu=True, workers_per_gpu=per_gpu,
                            workers=len(gpus) * per_gpu, lease=60.0)
            self.pools.start(spec, {"CUDA_VISIBLE_DEVICES": ",".join(gpus)})
        else:
            workers = self.jobs_per_gpu or os.cpu_count() or 1
            log.warning("no GPUs found: jobs run on CPU workers", extra={"workers": workers})
            self.pools.start(PoolSpec([self.task_type], fn=JOB_FN, name=name, workers=workers),
                             {"CUDA_VISIBLE_DEVICES": ""})


def _run(kind: str, configs: Sequence[Any], max_gpus: int | None, simultaneous_jobs_per_gpu: int | None,
         **options: Any) -> list[Any]:
    if not configs:
        return []
    driver = SearchDriver(kind, configs, max_gpus, simultaneous_jobs_per_gpu,
                          db_url=options.get("db_url"), start_pools=options.get("start_pools", True),
                          resume=options.get("resume", True), task_type=options.get("task_type", JOB_TASK_TYPE),
                          poll_s=options.get("poll_s", 5.0), progress=options.get("progress", True))
    return driver.run()


def run_grid_searches(configs: Sequence[GridSearchConfig], max_gpus: int | None = None,
                      simultaneous_jobs_per_gpu: int | None = None, **options: Any) -> list[Any]:
    """Run every grid search at once on shared GPU slots; returns each one's ``agg_results``.

    options: ``db_url`` (default ``$EQFLOW_DB_URL`` or the embedded cluster), ``start_pools``
    (False: pools started elsewhere serve ``task_type``), ``resume`` (False: start over),
    ``task_type`` (default 9100), ``progress`` (False: no progress bar or status lines).
    """
    return _run("grid", configs, max_gpus, simultaneous_jobs_per_gpu, **options)


def run_binary_searches(configs: Sequence[BinarySearchConfig], max_gpus: int | None = None,
                        simultaneous_jobs_per_gpu: int | None = None, **options: Any) -> list[Any]:
    """Run every binary search at once on shared GPU slots; returns ``(achieved_results,
    failed_results)`` per search, each ``(value, aggregated result)`` or None. Options as
    :func:`run_grid_searches`."""
    return _run("binary", configs, max_gpus, simultaneous_jobs_per_gpu, **options)

