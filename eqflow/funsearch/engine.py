"""The FunSearch ME loop on eqflow's task table.

Samplers and evaluators are pools; the ME submits ``sample`` tasks (parents chosen from an
island), turns each answer into candidates, submits one ``evaluate`` task per body never seen
before, and registers the programs that score. What it learns goes to PostgreSQL first
(``fs_candidates``, ``fs_evaluations``, ``fs_programs``, ``fs_islands``) and into memory after, so
an ME killed at any point resumes from the database: it re-attaches to the tasks in flight,
processes what finished while it was away, and neither loses a program nor registers one twice.

Work in flight is bounded by the live slots: at most ``in_flight_per_slot`` sample tasks per
sampler slot, and no new sample while evaluations fill ``in_flight_per_slot`` per evaluator slot.
Evaluations outrank samples, so what was generated is finished first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eqflow.config import FunSearchConfig, WorkflowConfig
from eqflow.db.sqlfiles import query
from eqflow.funsearch.code import body_hash, function_source, trim_completion
from eqflow.funsearch.programs import DatabaseSettings, Program, ProgramsView
from eqflow.funsearch.prompts import restore_names
from eqflow.funsearch.samplers import SampleRequest
from eqflow.funsearch.spec import Spec, test_key
from eqflow.futures import Future
from eqflow.models import TaskStatus
from eqflow.workflows.runkit import PoolKeeper, Progress

log = logging.getLogger("eqflow.funsearch")

EVALUATE_PRIORITY = 10
SAMPLE_PRIORITY = 0
SEED_TASK_ID = 0  # the candidates of the spec's own function (one per island) hang off task 0
PROGRESS_EVERY_S = 2.0
SLOTS_EVERY_S = 2.0


def island_tag(island: int) -> str:
    return f"island:{island}"


@dataclass
class Stop:
    reason: str
    finished: bool  # True: the run is done (targets or budget); False: interrupted, resumable


@dataclass
class Counters:
    evaluated: int = 0
    registered: int = 0
    after_target: int | None = None  # programs registered since the targets were first reached
    samples_done: int = 0
    samples_failed: int = 0
    unparsed: int = 0
    cache_hits: int = 0
    stale_dropped: int = 0
    resets: int = 0
    max_samples_in_flight: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class FunSearch:
    """One FunSearch experiment: ``FunSearch(queue, cfg, exp_id).run()`` until the targets or a
    budget are reached; run again with the same exp_id to resume."""

    def __init__(self, queue: Any, cfg: WorkflowConfig, exp_id: str, *, out: Path | None = None,
                 progress: bool = True, start_pools: bool = True, spec: Spec | None = None) -> None:
        if cfg.funsearch is None:
            raise ValueError("the config has no funsearch: section")
        if not hasattr(queue, "db"):
            raise ValueError("FunSearch keeps its programs database next to the tasks: it needs a local task "
                             "queue (task_queues type local), not a service or Globus one")
        self.queue, self.cfg, self.exp_id = queue, cfg, exp_id
        self.fs: FunSearchConfig = cfg.funsearch
        self.db = queue.db
        self.spec = spec or Spec.load(self.fs.spec)
        self.tests = self.fs.tests if self.fs.tests is not None else self.spec.default_tests
        if not self.tests:
            raise ValueError(f"no tests: give funsearch.tests (the spec {self.spec.name} has no DEFAULT_TESTS)")
        self.keys = [test_key(t) for t in self.tests]
        self.targets = self._targets()
        self.out = out or Path(cfg.output_dir) / exp_id
        self.progress = progress
        self.start_pools = start_pools
        self.sample_type = cfg.tasks["sample"].type
        self.evaluate_type = cfg.tasks["evaluate"].type
        self.rng = random.Random(f"{cfg.seed}:{exp_id}")
        self.view = ProgramsView(DatabaseSettings(
            num_islands=self.fs.num_islands, functions_per_prompt=self.fs.functions_per_prompt,
            cluster_temperature_init=self.fs.cluster_temperature_init,
            cluster_temperature_period=self.fs.cluster_temperature_period,
            reset_period_s=self.fs.reset_period_s, reset_programs=self.fs.reset_programs), self.rng)
        self.pools = PoolKeeper(queue, cfg, exp_id, self.out)
        self.scaler: Any = None  # DynamicScaler when funsearch.scaling.enabled
        self.samples: dict[int, Future] = {}
        self.evaluations: dict[int, Future] = {}
        self.counters = Counters()
        self.next_island = 0
        self._slots: tuple[int, int] = (0, 0)
        self._slots_at = -math.inf
        self.started = time.monotonic()
        self.last_reset = time.monotonic()
        self.eval_payload = {"spec_name": self.spec.name, "spec": self.spec.text, "tests": self.tests,
                             "limits": {"timeout_s": self.fs.eval_timeout_s, "memory_mb": self.fs.eval_memory_mb}}

    def _targets(self) -> dict[str, float]:
        if self.fs.targets is not None:
            if len(self.fs.targets) != len(self.keys):
                raise ValueError(f"funsearch.targets: {len(self.fs.targets)} targets for {len(self.keys)} tests")
            return dict(zip(self.keys, self.fs.targets, strict=True))
        known = self.spec.targets
        return {k: known[k] for k in self.keys if k in known}

    # -- the loop ----------------------------------------------------------------------------------
    def open(self) -> dict[str, int]:
        """Attach to the experiment: its islands and programs from the database, what finished
        while no ME watched processed, the tasks in flight re-attached; a new one is seeded."""
        self.check_experiment()
        self.queue.create_experiment(self.exp_id, self._experiment_config())
        self.db.execute("fs_init_islands", {"exp_id": self.exp_id, "n": self.fs.num_islands})
        self._load()
        recovered = self._recover()
        if self.view.total() == 0 and not self.evaluations and not self._seed_candidates_exist():
            self._seed()
        return recovered

    def check_experiment(self) -> None:
        """An exp_id already used by another workflow (or another spec) is an error, not a resume."""
        row = self.db.fetch_one("get_experiment", {"exp_id": self.exp_id})
        if row is None:
            return
        config = row[2] or {}
        if config.get("workflow") != "funsearch":
            raise ValueError(f"experiment {self.exp_id!r} exists and is not a FunSearch run "
                             f"({config.get('workflow', 'Ackley/GPR')}); choose another exp_id")
        if config.get("spec_sha256") not in (None, self.spec.sha256):
            raise ValueError(f"experiment {self.exp_id!r} ran another spec (sha256 {config['spec_sha256'][:12]}...); "
                             f"resume it with the same spec, or choose another exp_id")

    def run(self) -> Stop:
        recovered = self.open()
        self.queue.record_event(self.exp_id, "session_started", {
            "programs": self.view.total(), "evaluated": self.counters.evaluated,
            "open_samples": len(self.samples), "open_evaluations": len(self.evaluations), **recovered})
        log.info("funsearch session", extra={"exp_id": self.exp_id, "spec": self.spec.name,
                                             "tests": len(self.tests), "programs": self.view.total(),
                                             "evaluated": self.counters.evaluated, **recovered})
        if self.start_pools and self.fs.scaling.enabled:
            self.scaler = self._scaler()  # its first check starts min_samplers / min_evaluators
        elif self.start_pools:
            self._start_pools()
        bar = Progress(self.fs.max_evaluations or 0, self.exp_id, enabled=self.progress,
                       initial=self.counters.evaluated)
        watch = self.queue.watch_completions({self.exp_id})
        stop: Stop | None = None
        last_progress = 0.0
        try:
            while (stop := self._stop_reason()) is None:
                if self.scaler is not None:
                    self.scaler.check()
                self._top_up()
                pending = {**self.samples, **self.evaluations}
                rows = watch.finished(pending, 0.5) if pending else []
                if not pending:
                    time.sleep(0.2)
                self._process(rows)
                self._maybe_reset()
                best = self.view.best
                bar.update(self.counters.evaluated, best=None if best is None else f"{best.score:g}",
                           programs=self.view.total())
                if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                    self._record_progress()
                    last_progress = time.monotonic()
        finally:
            watch.close()
            bar.close()
            self._record_progress()
            self._finish(stop)
        return stop

    def _scaler(self) -> Any:
        from eqflow.funsearch.scaling import DynamicScaler, LocalPools

        pools = LocalPools.from_config(self.cfg, self.exp_id, self.queue, self.out / "pool-logs")
        return DynamicScaler(self.queue, self.exp_id, self.fs.scaling, pools,
                             task_types={"sampler": self.sample_type, "evaluator": self.evaluate_type},
                             log_dir=self.out / "logs")

    def _stop_pools(self) -> None:
        self.pools.stop_all()
        if self.scaler is not None:
            self.scaler.pools.stop_all()
            self.scaler.close()
            self.scaler = None

    def _stop_reason(self) -> Stop | None:
        fs, c = self.fs, self.counters
        if c.after_target is not None and c.after_target >= fs.optimal_solution_programs:
            return Stop(f"targets reached, then {c.after_target} more programs", True)
        if fs.max_evaluations is not None and c.evaluated >= fs.max_evaluations:
            return Stop(f"evaluation budget of {fs.max_evaluations} reached", True)
        if fs.max_seconds is not None and time.monotonic() - self.started >= fs.max_seconds:
            return Stop(f"time budget of {fs.max_seconds:g} s reached", True)
        return None

    def _finish(self, stop: Stop | None) -> None:
        if stop is None or not stop.finished:
            self._stop_pools()
            self.queue.record_event(self.exp_id, "interrupted", {"evaluated": self.counters.evaluated})
            return
        # Pools first: a stopping pool gives back the tasks it claimed but had not started, and
        # those must be canceled too, not left queued.
        self._stop_pools()
        canceled = self.db.fetch_all("fs_cancel_queued", {
            "exp_id": self.exp_id, "tags": None, "types": [self.sample_type, self.evaluate_type]})
        self.queue.record_event(self.exp_id, "finished", {
            "reason": stop.reason, "evaluated": self.counters.evaluated, "programs": self.counters.registered,
            "canceled": len(canceled)})
        self.queue.set_experiment_status(self.exp_id, "finished")
        log.info("funsearch finished", extra={"exp_id": self.exp_id, "reason": stop.reason,
                                              "evaluated": self.counters.evaluated, "canceled": len(canceled)})

    # -- state from the database ---------------------------------------------------------------
    def _load(self) -> None:
        versions = {row[0]: row[1] for row in self.db.fetch_all("fs_islands", {"exp_id": self.exp_id})}
        if len(versions) > self.fs.num_islands:
            raise ValueError(f"experiment {self.exp_id!r} has {len(versions)} islands; resume it with "
                             f"funsearch.num_islands: {len(versions)} (the config says {self.fs.num_islands})")
        programs = [Program(pid, island, body, scores, score, behaviour)
                    for pid, island, body, scores, score, behaviour in
                    self.db.fetch_all("fs_current_programs", {"exp_id": self.exp_id})]
        self.view.load(versions, programs)
        evaluated, registered, _ = self.db.fetch_one("fs_counts", {"exp_id": self.exp_id}) or (0, 0, 0)
        self.counters.evaluated, self.counters.registered = evaluated, registered
        self.counters.after_target = self._programs_after_target()

    def _programs_after_target(self) -> int | None:
        if not self.targets:
            return None
        first = None
        count = 0
        for _pid, *_rest, scores, _score, _parents, _sampler, _at in self.db.fetch_all(
                "fs_all_programs", {"exp_id": self.exp_id}):
            if first is not None:
                count += 1
            elif self._meets_targets(scores):
                first = _pid
        return count if first is not None else None

    def _meets_targets(self, scores: dict[str, float]) -> bool:
        return bool(self.targets) and all(scores.get(k, -math.inf) >= t for k, t in self.targets.items())

    def _recover(self) -> dict[str, int]:
        """After a restart: finish what finished while no ME was watching, re-attach the rest."""
        types = [self.sample_type, self.evaluate_type]
        for task_id, task_type, tag in self.db.fetch_all("fs_open_tasks", {"exp_id": self.exp_id, "types": types}):
            future = Future(self.queue, task_id, self.exp_id, task_type, tag)
            (self.samples if task_type == self.sample_type else self.evaluations)[task_id] = future
        unprocessed = [r[0] for r in self.db.fetch_all("fs_finished_unprocessed_samples", {
            "exp_id": self.exp_id, "task_type": self.sample_type})]
        self._process(self.db.fetch_all("fs_task_outcomes", {"task_ids": unprocessed}) if unprocessed else [],
                      samples=set(unprocessed))
        resolvable = [r[0] for r in self.db.fetch_all("fs_resolvable_bodies", {"exp_id": self.exp_id})]
        for digest in resolvable:
            self._resolve(digest)
        resubmitted = finished = 0
        for digest, body, task_id, status, result, error in self.db.fetch_all(
                "fs_unfinished_evaluations", {"exp_id": self.exp_id}):
            if task_id is None:  # claimed, then the ME died before submitting it
                self._submit_evaluation(digest, body, island=0)
                resubmitted += 1
            elif status in ("complete", "failed", "canceled"):
                self._evaluation_done(task_id, TaskStatus(status), result, error)
                finished += 1
        return {"samples_recovered": len(unprocessed), "evaluations_recovered": finished, "resolved": len(resolvable),
                "resubmitted": resubmitted}

    def _seed_candidates_exist(self) -> bool:
        rows = self.db.fetch_all("fs_candidate_states", {"exp_id": self.exp_id})
        return any(count for _, count in rows)

    def _seed(self) -> None:
        """The spec's own function, evaluated once and registered on every island."""
        body = self.spec.initial_body
        for island in range(self.fs.num_islands):
            self._take_candidates(SEED_TASK_ID, island, self.view.islands[island].version, [], [body],
                                  first_idx=island)

    def _experiment_config(self) -> dict[str, Any]:
        from eqflow.workflows.ackley_gpr import public_config

        return {**public_config(self.cfg), "workflow": "funsearch", "spec_sha256": self.spec.sha256}

    # -- pools and slots -------------------------------------------------------------------------
    def _start_pools(self) -> None:
        for task in ("evaluate", "sample"):
            self.pools.start(task, self.cfg.tasks[task].pools[0], reason="start")

    def slots(self) -> tuple[int, int]:
        """Live sampler and evaluator slots: workers of the running pools that serve each type
        (the configured pools' workers while none has registered yet)."""
        if time.monotonic() - self._slots_at < SLOTS_EVERY_S:
            return self._slots
        samplers = evaluators = 0
        for pool in self.queue.pools(active_only=True):
            if self.sample_type in pool.task_types:
                samplers += pool.n_workers
            if self.evaluate_type in pool.task_types:
                evaluators += pool.n_workers
        if samplers == 0:
            samplers = self.cfg.pools[self.cfg.tasks["sample"].pools[0]].workers
        if evaluators == 0:
            evaluators = self.cfg.pools[self.cfg.tasks["evaluate"].pools[0]].workers
        self._slots, self._slots_at = (samplers, evaluators), time.monotonic()
        return self._slots

    def caps(self) -> tuple[int, int]:
        samplers, evaluators = self.slots()
        return samplers * self.fs.in_flight_per_slot, evaluators * self.fs.in_flight_per_slot

    # -- sampling --------------------------------------------------------------------------------
    def _top_up(self) -> None:
        sample_cap, evaluate_cap = self.caps()
        islands = [i for i in self.view.islands if i.programs]
        while islands and len(self.samples) < sample_cap and len(self.evaluations) < evaluate_cap:
            island = islands[self.next_island % len(islands)]
            self.next_island += 1
            self._submit_sample(island.island)
        self.counters.max_samples_in_flight = max(self.counters.max_samples_in_flight, len(self.samples))

    def _submit_sample(self, island_id: int) -> None:
        island = self.view.islands[island_id]
        parents = self._parents(island_id)
        sources = [function_source(self.spec.header, p.body) for p in parents]
        sampler = self.fs.sampler
        prompt = "" if sampler.get("type", "mutation") == "mutation" else self._prompt(sources)
        request = SampleRequest(prompt=prompt, parents=tuple(sources), function_name=self.spec.function_name,
                                header=self.spec.header, samples=self.fs.samples_per_prompt,
                                seed=self.rng.getrandbits(31), params={},
                                scope=f"{self.exp_id}/{island_id}/{island.version}")
        payload = {"sampler": sampler, "request": asdict(request), "island": island_id, "version": island.version,
                   "parents": [p.program_id for p in parents]}
        future = self.queue.submit(self.exp_id, self.sample_type, json.dumps(payload), priority=SAMPLE_PRIORITY,
                                   tag=island_tag(island_id))
        self.samples[future.task_id] = future

    def _parents(self, island_id: int) -> list[Program]:
        island = self.view.islands[island_id]
        if self.fs.selection == "hill_climb":
            return [p] if (p := island.best) is not None else []
        if self.fs.selection == "random":
            return [min(island.programs, key=lambda p: p.program_id)] if island.programs else []
        return self.view.choose_parents(island_id)

    def _prompt(self, sources: list[str]) -> str:
        from eqflow.funsearch.prompts import build_prompt

        return build_prompt(self.spec, sources)

    # -- results ---------------------------------------------------------------------------------
    def _process(self, rows: list[tuple[Any, ...]], samples: set[int] | None = None) -> None:
        sample_rows = [r for r in rows if (r[0] in self.samples) or (samples is not None and r[0] in samples)]
        evaluate_rows = [r for r in rows if r[0] in self.evaluations]
        payloads = {}
        if sample_rows:
            payloads = dict(self.db.fetch_all("fs_task_payloads", {"task_ids": [r[0] for r in sample_rows]}))
        for task_id, status, result, error, _pool in sample_rows:
            self.samples.pop(task_id, None)
            self._sample_done(task_id, TaskStatus(status), result, error, json.loads(payloads[task_id]))
        for task_id, status, result, error, _pool in evaluate_rows:
            self.evaluations.pop(task_id, None)
            self._evaluation_done(task_id, TaskStatus(status), result, error)

    def _sample_done(self, task_id: int, status: TaskStatus, result: str | None, error: str | None,
                     payload: dict[str, Any]) -> None:
        bodies: list[str] = []
        if status is TaskStatus.COMPLETE and result is not None:
            answer = json.loads(result)
            bodies = [b for b in answer.get("bodies", []) if isinstance(b, str)]
            self.counters.samples_done += 1
        else:
            self.counters.samples_failed += status is TaskStatus.FAILED
            if status is TaskStatus.FAILED:
                log.warning("sample task failed", extra={"task_id": task_id, "error": (error or "")[-300:]})
        self._take_candidates(task_id, payload["island"], payload["version"], payload["parents"], bodies)

    def _take_candidates(self, sample_task_id: int, island: int, version: int, parents: list[int],
                         completions: list[str], first_idx: int = 0) -> None:
        """Record a sample's candidates once, then ask for the evaluations not cached."""
        stale = version != self.view.islands[island].version
        trimmed = [self._trim(c) for c in completions]
        hashes = [body_hash(t, self.spec.header) if t is not None else None for t in trimmed]
        states = ["stale" if stale else "unparsed" if t is None else "pending" for t in trimmed]
        idxs = [first_idx + i for i in range(len(trimmed))]
        if not trimmed:  # nothing usable: one marker row says this sample was processed
            idxs, trimmed, hashes, states = [-1], [None], [None], ["failed"]
        inserted = {r[0] for r in self.db.fetch_all("fs_insert_candidates", {
            "exp_id": self.exp_id, "sample_task_id": sample_task_id, "island": island, "island_version": version,
            "parents": parents, "idxs": idxs, "body_hashes": hashes, "states": states}, idempotent=False)}
        new_states = [s for i, s in zip(idxs, states, strict=True) if i in inserted]
        self.counters.unparsed += new_states.count("unparsed")
        self.counters.stale_dropped += new_states.count("stale")
        for idx, body, digest, state in zip(idxs, trimmed, hashes, states, strict=True):
            if idx in inserted and state == "pending" and body is not None and digest is not None:
                self._request_evaluation(digest, body, island)

    def _trim(self, completion: str) -> str | None:
        """The first function body that parses, with calls of ``priority_vK`` (the names a prompt
        shows) named back to the evolved function."""
        body = trim_completion(completion, self.spec.function_name, self.spec.header)
        return None if body is None else restore_names(body, self.spec.function_name)

    def _request_evaluation(self, digest: str, body: str, island: int) -> None:
        claimed = self.db.fetch_all("fs_claim_evaluation", {"exp_id": self.exp_id, "body_hash": digest,
                                                            "body": body})
        if claimed:
            self._submit_evaluation(digest, body, island)
            return
        row = self.db.fetch_one("fs_evaluation", {"exp_id": self.exp_id, "body_hash": digest})
        if row is not None and row[0] is not None:  # evaluated before: costs nothing
            self.counters.cache_hits += 1
            self._resolve(digest)
        # else its evaluation is in flight: the candidate is resolved when it finishes

    def _submit_evaluation(self, digest: str, body: str, island: int, after: int = 0) -> None:
        """Submit a body's evaluation. The idempotency key names the body and the task it replaces
        (after: a canceled one; 0 for the first), so an ME killed between submitting and recording
        the task id submits nothing new when it resumes: it gets the first task back."""
        payload = json.dumps({**self.eval_payload, "body": body, "body_hash": digest})
        key = f"fs:{hashlib.sha256(self.exp_id.encode()).hexdigest()[:16]}:{digest[:40]}:{after}"
        (future,) = self.queue.submit_many(self.exp_id, self.evaluate_type, [payload], priority=EVALUATE_PRIORITY,
                                           tag=island_tag(island), idempotency_key=key)
        self.db.execute("fs_set_evaluation_task", {"exp_id": self.exp_id, "body_hash": digest,
                                                   "task_id": future.task_id})
        self.evaluations[future.task_id] = future

    def _evaluation_done(self, task_id: int, status: TaskStatus, result: str | None, error: str | None) -> None:
        row = self.db.fetch_one("fs_evaluation_by_task", {"exp_id": self.exp_id, "task_id": task_id})
        if row is None:
            return  # superseded by a resubmission
        digest = row[0]
        if status is TaskStatus.CANCELED:
            self._evaluation_canceled(digest)
            return
        if status is TaskStatus.COMPLETE and result is not None:
            outcome = json.loads(result)
        else:
            outcome = {"status": "error", "scores": {}, "behaviour_hash": None, "cpu_s": 0.0,
                       "error": f"evaluate task {status.value}: {(error or '')[-2000:]}"}
        scores = {k: float(v) for k, v in (outcome.get("scores") or {}).items()}
        ok = outcome["status"] == "ok" and all(k in scores for k in self.keys)
        score = self.spec.reduce(scores, self.fs.reduce) if ok else None
        status_text = "invalid" if outcome["status"] == "ok" and not ok else outcome["status"]
        self.db.execute("fs_record_evaluation", {
            "exp_id": self.exp_id, "body_hash": digest, "status": status_text, "scores": json.dumps(scores),
            "score": score,
            "behaviour_hash": outcome.get("behaviour_hash"), "cpu_s": outcome.get("cpu_s"),
            "error": outcome.get("error")})
        self.counters.evaluated += 1
        self._resolve(digest)

    def _evaluation_canceled(self, digest: str) -> None:
        """A reset canceled this evaluation: drop the stale candidates waiting on it; any other
        island's candidate still waiting gets a new evaluation."""
        waiting = [c for c in self.db.fetch_all("fs_pending_candidates", {"exp_id": self.exp_id, "body_hash": digest})
                   if c[3] == self.view.islands[c[2]].version]
        self._resolve(digest, evaluated=False)
        if waiting:
            row = self.db.fetch_one("fs_evaluation", {"exp_id": self.exp_id, "body_hash": digest})
            if row is not None:
                self._submit_evaluation(digest, row[5], waiting[0][2], after=row[4] or 0)
        else:
            self.db.execute("fs_forget_evaluation", {"exp_id": self.exp_id, "body_hash": digest})

    def _resolve(self, digest: str, evaluated: bool = True) -> None:
        """Settle the candidates waiting on one body, in one transaction: registered (a new
        behaviour on its island), duplicate, stale (its island was reset) or failed. With
        evaluated=False only the stale ones are settled."""
        new: list[Program] = []
        with self.db.connection() as conn, conn.transaction():
            row = conn.execute(query("fs_evaluation"), {"exp_id": self.exp_id, "body_hash": digest}).fetchone()
            if row is None:
                return
            status, scores, score, behaviour, _task, body = row
            pending = conn.execute(query("fs_pending_candidates"),
                                   {"exp_id": self.exp_id, "body_hash": digest}).fetchall()
            for sample_task_id, idx, island, version, parents in pending:
                program_id = None
                if version != self.view.islands[island].version:
                    state = "stale"
                elif not evaluated:
                    continue
                elif status != "ok":
                    state = "failed"
                else:
                    inserted = conn.execute(query("fs_insert_program"), {
                        "exp_id": self.exp_id, "island": island, "island_version": version, "body": body,
                        "body_hash": digest, "behaviour_hash": behaviour, "scores": json.dumps(scores),
                        "score": score, "parents": parents, "sampler": self.fs.sampler.get("type", "mutation"),
                    }).fetchone()
                    state = "registered" if inserted else "duplicate"
                    if inserted:
                        program_id = inserted[0]
                        new.append(Program(program_id, island, body, scores, score, behaviour))
                conn.execute(query("fs_set_candidate_state"), {
                    "exp_id": self.exp_id, "sample_task_id": sample_task_id, "idx": idx, "state": state,
                    "program_id": program_id})
        for program in new:
            self._registered(program)

    def _registered(self, program: Program) -> None:
        self.view.add(program)
        self.counters.registered += 1
        if self.counters.after_target is not None:
            self.counters.after_target += 1
        elif self._meets_targets(program.scores):
            self.counters.after_target = 0
            self.queue.record_event(self.exp_id, "targets_reached", {
                "program_id": program.program_id, "scores": program.scores, "evaluated": self.counters.evaluated})
            log.info("targets reached", extra={"exp_id": self.exp_id, "program_id": program.program_id,
                                               "evaluated": self.counters.evaluated})

    # -- resets ----------------------------------------------------------------------------------
    def _maybe_reset(self) -> None:
        why = self.view.reset_due(time.monotonic() - self.last_reset)
        if why is not None:
            self.reset(why)

    def reset(self, why: str) -> list[int]:
        """Clear the weaker half of the islands: their version goes up, their queued tasks are
        canceled in one statement, and each gets the best program of a random surviving island."""
        weak, founders = self.view.plan_reset()
        self.last_reset = time.monotonic()
        if not weak:
            return []
        with self.db.connection() as conn, conn.transaction():
            versions = dict(conn.execute(query("fs_reset_islands"),
                                         {"exp_id": self.exp_id, "islands": weak}).fetchall())
            canceled = [r[0] for r in conn.execute(query("fs_cancel_queued"), {
                "exp_id": self.exp_id, "tags": [island_tag(i) for i in weak], "types": None}).fetchall()]
            seeded = []
            for island, founder in founders.items():
                row = conn.execute(query("fs_insert_program"), {
                    "exp_id": self.exp_id, "island": island, "island_version": versions[island],
                    "body": founder.body, "body_hash": body_hash(founder.body, self.spec.header),
                    "behaviour_hash": founder.behaviour_hash, "scores": json.dumps(founder.scores),
                    "score": founder.score, "parents": [founder.program_id], "sampler": "reset"}).fetchone()
                seeded.append(Program(row[0], island, founder.body, founder.scores, founder.score,
                                      founder.behaviour_hash))
        for island in weak:
            self.view.islands[island].clear(versions[island])
        for program in seeded:
            self.view.add(program)
            self.counters.registered += 1
        self.counters.resets += 1
        self.queue.record_event(self.exp_id, "reset", {
            "islands": weak, "versions": versions, "canceled": canceled, "reason": why,
            "founders": {p.island: p.program_id for p in seeded}})
        log.info("islands reset", extra={"exp_id": self.exp_id, "islands": weak, "canceled": len(canceled),
                                         "reason": why})
        return canceled

    # -- progress --------------------------------------------------------------------------------
    def _record_progress(self) -> None:
        best = self.view.best
        self.queue.record_event(self.exp_id, "progress", {
            "evaluated": self.counters.evaluated, "programs": self.view.total(),
            "best": None if best is None else best.score, "best_scores": None if best is None else best.scores,
            "samples_in_flight": len(self.samples), "evaluations_in_flight": len(self.evaluations),
            "cache_hits": self.counters.cache_hits, "unparsed": self.counters.unparsed,
            "resets": self.counters.resets, "elapsed_s": round(time.monotonic() - self.started, 1)})
