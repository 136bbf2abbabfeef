"""The dashboard's snapshots: what the page shows of one experiment, from the named blocks
``dashboard_*`` of ``sql/queries.sql``. Every query is bounded (a LIMIT, or one experiment's
rows through ``tasks_exp_idx``); :class:`Snapshots` shares one computation among all viewers of
an experiment and spaces refreshes by what they cost."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

STATUSES = ("queued", "running", "complete", "failed", "canceled")
TIMELINE_KINDS = ["pool_started", "pool_stopped", "retrain", "budget_reached", "finished", "session_started"]
MAX_BUCKETS = 90  # status-over-time points
NICE_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
SAMPLE = 10_000  # most tasks read for status-over-time (a systematic sample by task id)
ERROR_CHARS = 4000  # an error is cut to this many characters (the page shows the first line, expandable)


class Database(Protocol):
    def fetch_all(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]: ...


def bucket_width(span_s: float, buckets: int = MAX_BUCKETS) -> int:
    """A round bucket width (seconds) that covers span_s in at most ``buckets`` buckets."""
    for width in NICE_WIDTHS:
        if span_s / width <= buckets:
            return width
    return int(math.ceil(span_s / buckets / 86400.0)) * 86400


def experiments(db: Database, limit: int = 200) -> list[dict[str, Any]]:
    return [{"exp_id": e, "created_at": at, "status": s}
            for e, at, s in db.fetch_all("dashboard_experiments", {"limit": limit})]


def _counts(db: Database, exp_id: str) -> tuple[dict[str, int], dict[str, int], int]:
    """Tasks per status, completed tasks per pool, completions in the last minute."""
    by_status = dict.fromkeys(STATUSES, 0)
    done_by_pool: dict[str, int] = {}
    last_minute = 0
    for status, pool, n, recent in db.fetch_all("dashboard_task_counts", {"exp_id": exp_id}):
        by_status[status] = by_status.get(status, 0) + n
        if status == "complete" and pool is not None:
            done_by_pool[pool] = done_by_pool.get(pool, 0) + n
        last_minute += recent
    return by_status, done_by_pool, last_minute


def timeline(db: Database, exp_id: str, counts: dict[str, int], sample: int = SAMPLE) -> dict[str, Any]:
    """Tasks queued, running, complete, failed and canceled over time (cumulative, per bucket),
    and completions per minute in each bucket. Drawn from a systematic sample of at most
    ``sample`` task ids (every task when the experiment's ids span fewer), calibrated to the
    exact ``counts`` per status."""
    lo, hi, first, now = db.fetch_all("dashboard_task_range", {"exp_id": exp_id})[0]
    if lo is None or first is None:
        return {"width_s": 1, "points": [], "step": 1, "sampled": 0}
    origin = math.floor(first)
    width = bucket_width(max(now - origin, 1.0))
    step = max(1, math.ceil((hi - lo + 1) / sample))
    rows = db.fetch_all("dashboard_timeline", {"exp_id": exp_id, "width_s": width, "origin": origin,
                                               "lo": lo, "hi": hi, "step": step})
    sampled = sum(r[1] for r in rows)
    points = []
    created = started = complete = failed = canceled = 0
    for at, c, s, ok, bad, gone in rows:
        created, started = created + c, started + s
        complete, failed, canceled = complete + ok, failed + bad, canceled + gone
        finished = complete + failed + canceled
        points.append({"t": at, "queued": max(created - started, 0), "running": max(started - finished, 0),
                       "complete": complete, "failed": failed, "canceled": canceled, "per_min": ok * 60.0 / width})
    if step > 1 and points:
        _calibrate(points, counts, sampled)
    return {"width_s": width, "points": points, "step": step, "sampled": sampled}


def _calibrate(points: list[dict[str, Any]], counts: dict[str, int], sampled: int) -> None:
    """Scale a sample's curves so that each ends at the exact count of its status (a status the
    sample missed appears at the last point); completions per minute as the complete curve."""
    overall = sum(counts.values()) / sampled if sampled else 1.0
    factors = {status: counts.get(status, 0) / points[-1][status] if points[-1][status] else overall
               for status in STATUSES}
    factors["per_min"] = factors["complete"]
    for p in points:
        for key, factor in factors.items():
            p[key] = p[key] * factor if key == "per_min" else round(p[key] * factor)
    for status in STATUSES:  # a status the sample missed: its exact count, at the end
        points[-1][status] = counts.get(status, 0)


def _pools(db: Database, done_by_pool: dict[str, int], limit: int) -> list[dict[str, Any]]:
    out = []
    for (pool_id, name, label, types, launcher, host, pid, job_id, status, workers, stop, started, age,
         stopped) in db.fetch_all("dashboard_pools", {"limit": limit}):
        out.append({"pool_id": pool_id, "name": name, "label": label, "task_types": list(types),
                    "launcher": launcher, "host": host, "pid": pid, "job_id": job_id, "status": status,
                    "workers": workers, "stop_requested": stop, "started_at": started,
                    "heartbeat_age_s": age, "stopped_at": stopped, "done": done_by_pool.get(label, 0)})
    return out


def _events(db: Database, exp_id: str, kinds: list[str], limit: int) -> list[dict[str, Any]]:
    rows = db.fetch_all("dashboard_events", {"exp_id": exp_id, "kinds": kinds, "limit": limit})
    return [{"event_id": i, "at": at, "kind": k, "data": d} for i, at, k, d in reversed(rows)]


def _failures(db: Database, exp_id: str, failed: int, memo: dict[Any, Any]) -> list[dict[str, Any]]:
    """The newest failed tasks. Failing is final, so the list changes only when the count does:
    it is read again only then (with failures few and far between in a huge experiment, reading
    it is a scan of the experiment's rows)."""
    known = memo.get(("failures", exp_id))
    if known is not None and known[0] == failed:
        return known[1]  # type: ignore[no-any-return]
    failures = []
    if failed:
        for task_id, task_type, pool, n_failures, error, length, at in db.fetch_all(
                "dashboard_failures", {"exp_id": exp_id, "limit": 50, "max_chars": ERROR_CHARS}):
            failures.append({"task_id": task_id, "task_type": task_type, "pool": pool, "failures": n_failures,
                             "error": error or "", "error_chars": length or 0, "finished_at": at})
    memo[("failures", exp_id)] = (failed, failures)
    return failures


def snapshot(db: Database, exp_id: str, memo: dict[Any, Any] | None = None) -> dict[str, Any]:
    """Everything the page shows of one experiment. memo: kept between calls (by Snapshots)."""
    started = time.perf_counter()
    by_status, done_by_pool, last_minute = _counts(db, exp_id)
    failures = _failures(db, exp_id, by_status["failed"], memo if memo is not None else {})
    progress = db.fetch_all("dashboard_progress", {"exp_id": exp_id, "points": 300})
    experiment = db.fetch_all("get_experiment", {"exp_id": exp_id})
    return {
        "exp_id": exp_id,
        "status": experiment[0][3] if experiment else None,
        "created_at": experiment[0][1].timestamp() if experiment else None,
        "tasks": {**by_status, "total": sum(by_status.values())},
        "completions_last_minute": last_minute,
        "timeline": timeline(db, exp_id, by_status),
        "progress": progress[-1][1] if progress else None,
        "progress_history": [{**data, "at": at} for at, data in progress],
        "failures": failures,
        "pools": _pools(db, done_by_pool, 50),
        "decisions": [{"at": at, "task_type": t, "action": a, "reason": r, "queued": q, "pools": p, "job_id": j}
                      for at, t, a, r, q, p, j in db.fetch_all("dashboard_decisions", {"limit": 30})],
        "events": _events(db, exp_id, TIMELINE_KINDS, 200),
        "query_ms": round((time.perf_counter() - started) * 1000, 1),
        "at": time.time(),
    }


class Snapshots:
    """One snapshot per experiment, shared by every viewer: recomputed at most every
    ``min_interval_s``, and no more often than ``cost_factor`` times what the last one cost (a
    huge experiment refreshes less often instead of loading the database)."""

    def __init__(self, compute: Callable[[str, dict[Any, Any]], dict[str, Any]], *, min_interval_s: float = 1.0,
                 cost_factor: float = 4.0, max_entries: int = 64) -> None:
        self.compute = compute
        self.min_interval_s = min_interval_s
        self.cost_factor = cost_factor
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, float, dict[str, Any]]] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.memo: dict[Any, Any] = {}  # what compute keeps between calls

    def get(self, exp_id: str) -> dict[str, Any]:
        with self._lock:
            lock = self._locks.setdefault(exp_id, threading.Lock())
        with lock:  # viewers of one experiment wait for one computation
            entry = self._entries.get(exp_id)
            if entry is not None:
                computed_at, cost, data = entry
                if time.monotonic() - computed_at < max(self.min_interval_s, cost * self.cost_factor):
                    return data
            started = time.monotonic()
            data = self.compute(exp_id, self.memo)
            with self._lock:
                self._entries[exp_id] = (time.monotonic(), time.monotonic() - started, data)
                self._entries.move_to_end(exp_id)
                while len(self._entries) > self.max_entries:
                    old, _ = self._entries.popitem(last=False)
                    self._locks.pop(old, None)
                    for key in [k for k in list(self.memo) if k[1] == old]:
                        del self.memo[key]
            return data
