"""Prometheus metrics: the database's figures (for the service's /metrics) and a pool's own.

Scrape cost. Every figure about tasks is read from small tables that statement-level triggers
keep up to date (migration 0007): a scrape is three indexed reads of at most a few hundred rows,
whatever the number of tasks. Counting with GROUP BY over tasks would scan the table on every
scrape; reltuples-style estimates are not exact and lag behind a queue that changes every
second; counters kept by the service would miss the pools, which talk to the database directly.
See the migration for how the triggers keep contention off the claim and report path.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from eqflow.db.connector import connect_kwargs
from eqflow.db.sqlfiles import query

STATES = ("queued", "running", "complete", "failed", "canceled")
ALIVE_S = 60.0  # a pool whose heartbeat is older than this does not count as alive
STATEMENT_TIMEOUT_MS = 5000
_Family = TypeVar("_Family", CounterMetricFamily, GaugeMetricFamily)


@dataclass
class Figures:
    """What the metric tables say, summed over their shards."""

    tasks: dict[int, dict[str, int]] = field(default_factory=dict)  # type -> state -> count
    completed: dict[int, int] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)  # failed for good
    run_failures: dict[int, int] = field(default_factory=dict)  # failed or lost runs, retried or not
    lease_rescues: dict[int, int] = field(default_factory=dict)
    latency_buckets: dict[int, dict[float, int]] = field(default_factory=dict)  # type -> le -> count (not cumulative)
    latency_sum: dict[int, float] = field(default_factory=dict)
    decisions: dict[tuple[int, str], int] = field(default_factory=dict)  # (type, action) -> count
    pools_alive: int = 0
    pools_live: int = 0  # starting or running, whatever their heartbeat
    throughput_1m: dict[int, int] = field(default_factory=dict)  # completions in the last minute


def read_figures(conn: psycopg.Connection[Any], alive_s: float = ALIVE_S) -> Figures:
    """The O(1) reads: metrics_counters, metrics_pools, metrics_throughput."""
    fig = Figures()
    per_type: dict[str, dict[int, int]] = {"completed": fig.completed, "failed": fig.failed,
                                           "run_failures": fig.run_failures, "lease_rescues": fig.lease_rescues}
    for metric, task_type, label, value in conn.execute(query("metrics_counters")).fetchall():
        if metric == "tasks":
            fig.tasks.setdefault(task_type, {})[label] = round(value)
        elif metric in per_type:
            per_type[metric][task_type] = round(value)
        elif metric == "latency_bucket":
            fig.latency_buckets.setdefault(task_type, {})[float(label)] = round(value)
        elif metric == "latency_sum":
            fig.latency_sum[task_type] = float(value)
        elif metric == "scaling_decisions":
            fig.decisions[(task_type, label)] = round(value)
    row = conn.execute(query("metrics_pools"), {"alive_s": alive_s}).fetchone()
    if row:
        fig.pools_alive, fig.pools_live = int(row[0]), int(row[1])
    fig.throughput_1m = {t: int(n) for t, n in conn.execute(query("metrics_throughput")).fetchall()}
    return fig


def connect(url: str, application_name: str = "eqflow-metrics") -> psycopg.Connection[Any]:
    """A short-lived read connection that gives up quickly: a scrape must not hang on the database."""
    return psycopg.connect(url, autocommit=True, application_name=application_name,
                           options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}", **connect_kwargs(url))


class DatabaseCollector(Collector):
    """Runs the cheap reads at scrape time. One connection per scrape (scrapes come every few
    seconds at most); a database that does not answer gives eqflow_db_up 0 and nothing else."""

    def __init__(self, url: Callable[[], str], alive_s: float = ALIVE_S) -> None:
        self._url = url
        self.alive_s = alive_s
        self._lock = threading.Lock()  # one scrape at a time

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            start = time.perf_counter()
            try:
                with connect(self._url()) as conn:
                    fig: Figures | None = read_figures(conn, self.alive_s)
            except Exception:  # any failure to read is "the database is down" to Prometheus
                fig = None
            took = time.perf_counter() - start
        up = GaugeMetricFamily("eqflow_db_up", "1 if the database answered this scrape's queries, else 0")
        up.add_metric([], 1.0 if fig is not None else 0.0)
        yield up
        spent = GaugeMetricFamily("eqflow_db_scrape_duration_seconds", "Time this scrape spent on the database")
        spent.add_metric([], took)
        yield spent
        if fig is not None:
            yield from families(fig, self.alive_s)


def _per_type(family: _Family, values: dict[int, int]) -> _Family:
    for task_type, value in sorted(values.items()):
        family.add_metric([str(task_type)], float(value))
    return family


def families(fig: Figures, alive_s: float = ALIVE_S) -> Iterator[Metric]:
    tasks = GaugeMetricFamily("eqflow_tasks", "Tasks by type and state", labels=["task_type", "state"])
    for task_type, by_state in sorted(fig.tasks.items()):
        for state in STATES:
            tasks.add_metric([str(task_type), state], float(by_state.get(state, 0)))
    yield tasks
    yield _per_type(CounterMetricFamily("eqflow_tasks_completed", "Tasks completed", labels=["task_type"]),
                    fig.completed)
    yield _per_type(CounterMetricFamily("eqflow_tasks_failed", "Tasks failed for good (max_attempts spent "
                                        "or not retried)", labels=["task_type"]), fig.failed)
    yield _per_type(CounterMetricFamily("eqflow_task_run_failures", "Failed or lost runs, requeued or not",
                                        labels=["task_type"]), fig.run_failures)
    yield _per_type(CounterMetricFamily("eqflow_lease_rescues", "Runs whose lease expired (requeued or failed "
                                        "by the rescuer)", labels=["task_type"]), fig.lease_rescues)
    latency = HistogramMetricFamily("eqflow_task_latency_seconds", "Submit to complete, completed tasks",
                                    labels=["task_type"])
    for task_type, buckets in sorted(fig.latency_buckets.items()):
        cumulative, running = [], 0
        for le in sorted(buckets):
            running += buckets[le]
            cumulative.append(("+Inf" if math.isinf(le) else f"{le:g}", float(running)))
        if not cumulative or cumulative[-1][0] != "+Inf":
            cumulative.append(("+Inf", float(running)))
        latency.add_metric([str(task_type)], cumulative, fig.latency_sum.get(task_type, 0.0))
    yield latency
    decisions = CounterMetricFamily("eqflow_scaling_decisions", "Scaling controller decisions",
                                    labels=["task_type", "action"])
    for (task_type, action), n in sorted(fig.decisions.items()):
        decisions.add_metric([str(task_type), action], float(n))
    yield decisions
    alive = GaugeMetricFamily("eqflow_pools_alive", f"Pools starting or running with a heartbeat in the last "
                              f"{alive_s:g} s")
    alive.add_metric([], float(fig.pools_alive))
    yield alive
    live = GaugeMetricFamily("eqflow_pools_live", "Pools starting or running, whatever their heartbeat")
    live.add_metric([], float(fig.pools_live))
    yield live
    yield _per_type(GaugeMetricFamily("eqflow_tasks_completed_last_minute", "Completions in the last minute "
                                      "(10-second slots)", labels=["task_type"]), fig.throughput_1m)


def database_registry(url: Callable[[], str], alive_s: float = ALIVE_S) -> CollectorRegistry:
    """A registry with the database collector only (the service's /metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(url, alive_s))
    return registry


CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, float("inf"))


class PoolMetrics:
    """A pool's own figures, served by prometheus_client's HTTP server on host:port (one pool per
    port, so no pool label but on eqflow_pool_info): tasks completed and failed, tasks running,
    claim latency, heartbeat age."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.completed = Counter("eqflow_pool_tasks_completed", "Tasks this pool completed (reports accepted)",
                                 registry=reg)
        self.failed = Counter("eqflow_pool_tasks_failed", "Failed runs this pool reported", registry=reg)
        self.running = Gauge("eqflow_pool_tasks_running", "Tasks running in this pool's workers", registry=reg)
        self.claim_seconds = Histogram("eqflow_pool_claim_seconds", "Time of a claim that returned tasks (with "
                                       "the wait for work, when the pool was idle)", buckets=CLAIM_BUCKETS,
                                       registry=reg)
        self.info = Gauge("eqflow_pool_info", "1, labelled with this pool's name and id", ["pool", "pool_id"],
                          registry=reg)
        self._last_beat: float | None = None
        beat = Gauge("eqflow_pool_heartbeat_age_seconds", "Seconds since this pool's last heartbeat "
                     "(NaN before the first)", registry=reg)
        beat.set_function(lambda: math.nan if self._last_beat is None else time.monotonic() - self._last_beat)
        self.server, self.thread = start_http_server(port, addr=host, registry=reg)

    def registered(self, name: str, pool_id: int) -> None:
        self.info.labels(name, str(pool_id)).set(1)

    def heartbeat(self) -> None:
        self._last_beat = time.monotonic()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


CONTENT_TYPE = CONTENT_TYPE_LATEST


def service_metrics(state: Any, url: Callable[[], str]) -> bytes:
    """The service's /metrics body; its registry lives on the app's state (made at the first scrape)."""
    registry = getattr(state, "metrics_registry", None)
    if registry is None:
        registry = state.metrics_registry = database_registry(url)
    return generate_latest(registry)
