"""`eqflow bench peers`: the same workloads through eqflow, EQ-SQL (``eqsql`` on PyPI) and
PgQueuer (``pgqueuer``) on one server, in alternating rounds, with ratios.

Each system gets a database of its own on the server eqflow benchmarks on (``eqflow_bench``,
``eqflow_bench_eqsql`` with EQ-SQL's own ``workflow.sql``, ``eqflow_bench_pgqueuer`` with
PgQueuer's own install), and is driven through its public API with the same call pattern:

* bulk submit: n tasks in one call (EQ-SQL's submit_tasks, PgQueuer's batch enqueue);
* end to end, batch 1 and batch 8: worker processes claim/pop up to a batch, report each
  result; the ME submits n tasks and gathers them with as_completed (EQ-SQL, eqflow);
* drain: the ME submits n tasks, worker processes (PgQueuer's QueueManager; eqflow's claim/report
  loop) empty the queue; timed until a poll finds nothing open (every system);
* reprioritize: n queued tasks, a new priority for each in one call (EQ-SQL, eqflow);
* latency: one task submitted, run by an idle worker, its result awaited (EQ-SQL's Future.result,
  PgQueuer's CompletionWatcher, eqflow's Future.result), p50/p95;
* the ME workload: ``--me-queued`` tasks queued, all reprioritized, then ``--me-claims`` claims of
  one task each (EQ-SQL, eqflow; EQ-SQL's setup is written straight into its tables).

Every system uses its defaults (EQ-SQL's polling delays, PgQueuer's durable tables and debounce).
A peer whose package is not installed is left out (``pip install 'eqflow[bench]'``). The commit
ceiling (``pgbench -N``, the same clients) is printed beside the batch-1 figure: at one commit per
task it is the most any queue can do on this server.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import multiprocessing as mp
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any

import psycopg

from eqflow.bench.queue_bench import EXP, _start_workers, _stop_workers, bench_database, bench_end_to_end
from eqflow.db.resolve import resolve_url
from eqflow.db.sqlfiles import query
from eqflow.queue import LocalTaskQueue

TYPE = 7


def _admin(url: str, *names: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for name in names:
            conn.execute(query(name))


def _with_db(url: str, dbname: str) -> str:
    return psycopg.conninfo.make_conninfo(url, dbname=dbname)


def have(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


# -- the commit ceiling ------------------------------------------------------------------------
def _pgbench_exe() -> str:
    exe = shutil.which("pgbench")
    if exe is None:
        raise FileNotFoundError("pgbench is not on PATH (Debian ships it in the postgresql package)")
    return exe


@contextmanager
def pgbench_database(base: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh ``eqflow_bench_pgbench`` database, initialized by ``pgbench -i`` (scale 1), dropped
    on the way out: its URL and the environment pgbench needs to reach it."""
    exe = _pgbench_exe()
    _admin(base, "bench_drop_pgbench_database", "bench_create_pgbench_database")
    url = _with_db(base, "eqflow_bench_pgbench")
    info = psycopg.conninfo.conninfo_to_dict(url)
    env = {**os.environ, "PGPASSWORD": str(info.get("password", "")), "PGHOST": str(info.get("host", "")),
           "PGPORT": str(info.get("port", 5432)), "PGUSER": str(info.get("user", "")),
           "PGDATABASE": "eqflow_bench_pgbench"}
    try:
        subprocess.run([exe, "-i", "-q", "-s", "1"], env=env, capture_output=True, check=True)
        yield url, env
    finally:
        _admin(base, "bench_drop_pgbench_database")


def run_pgbench(env: dict[str, str], clients: int, seconds: float) -> str:
    """pgbench -N (simple update, one commit per transaction) with ``clients`` clients on the
    database of ``pgbench_database``; its report."""
    return subprocess.run([_pgbench_exe(), "-N", "-n", "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)),
                           "-T", str(int(seconds))], env=env, capture_output=True, text=True, check=True).stdout


def pgbench_tps(base: str, clients: int, seconds: float = 5.0) -> float | None:
    """The commits per second pgbench -N reaches with ``clients`` clients, at best one task each.
    None without pgbench."""
    if shutil.which("pgbench") is None:
        return None
    with pgbench_database(base) as (_, env):
        out = run_pgbench(env, clients, seconds)
    found = re.search(r"tps = ([\d.]+)", out)
    return float(found.group(1)) if found else None


# -- eqflow ------------------------------------------------------------------------------------
class Eqflow:
    name = "eqflow"

    def __init__(self, base: str) -> None:
        self.url = bench_database(base)
        self.queue = LocalTaskQueue(self.url, migrate=False)

    def reset(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(query("bench_truncate"))

    def submit(self, n: int) -> float:
        payloads = [json.dumps({"x": i}) for i in range(n)]
        t0 = time.perf_counter()
        futures = self.queue.submit_many(EXP, TYPE, payloads)
        elapsed = time.perf_counter() - t0
        assert len(futures) == n
        return n / elapsed

    def end_to_end(self, n: int, workers: int, batch: int) -> float:
        return bench_end_to_end(self.queue, n, workers, batch, task_type=TYPE)

    def drain(self, n: int, workers: int, batch: int) -> float:
        procs, stop = _start_workers(self.url, TYPE, workers, batch)
        try:
            t0 = time.perf_counter()
            self.queue.submit_many(EXP, TYPE, ["{}"] * n)
            while self.queue.open_count(TYPE):
                time.sleep(0.005)
            return n / (time.perf_counter() - t0)
        finally:
            _stop_workers(procs, stop)

    def reprioritize(self, n: int) -> float:
        futures = self.queue.submit_many(EXP, TYPE, ["{}"] * n)
        prios = [(i * 7919) % 100_000 + 1 for i in range(n)]
        t0 = time.perf_counter()
        changed = self.queue.set_priorities(futures, prios)
        elapsed = time.perf_counter() - t0
        assert len(changed) == n
        return n / elapsed

    def latency(self, rounds: int) -> list[float]:
        procs, stop = _start_workers(self.url, TYPE, 1, 1)
        samples = []
        try:
            for i in range(rounds + 3):
                t0 = time.perf_counter()
                self.queue.submit(EXP, TYPE, str(i)).result(timeout=60)
                if i >= 3:
                    samples.append(time.perf_counter() - t0)
        finally:
            _stop_workers(procs, stop)
        return samples

    def me_workload(self, queued: int, claims: int) -> dict[str, float]:
        futures: list[Any] = []
        for start in range(0, queued, 50_000):
            futures += self.queue.submit_many(EXP, TYPE, ["{}"] * min(50_000, queued - start))
        prios = [(i * 7919) % 1_000_003 + 1 for i in range(queued)]
        t0 = time.perf_counter()
        self.queue.set_priorities(futures, prios)
        t1 = time.perf_counter()
        for _ in range(claims):
            assert self.queue.claim(TYPE, n=1, pool="me")
        t2 = time.perf_counter()
        return {"reprioritize_s": t1 - t0, "claims_s": t2 - t1, "total_s": t2 - t0}

    def close(self) -> None:
        self.queue.close()


# -- EQ-SQL ------------------------------------------------------------------------------------
def _eqsql_queue(url: str) -> Any:
    os.environ.setdefault("USER", "eqflow")  # eqsql.db_tools reads it at import
    from eqsql.task_queues import local_queue

    info = psycopg.conninfo.conninfo_to_dict(url)
    return local_queue.init_task_queue(str(info.get("host", "127.0.0.1")), str(info.get("user")),
                                       int(str(info.get("port", 5432))), str(info.get("dbname")),
                                       password=info.get("password"))


def _eqsql_worker(url: str, batch: int, stop: Any, ready: Any) -> None:
    queue = _eqsql_queue(url)
    pool = f"eqsql-bench-{os.getpid()}"
    ready.release()
    while not stop.is_set():
        got = queue.query_task(TYPE, n=batch, worker_pool=pool, timeout=0.5)
        for msg in got if isinstance(got, list) else [got]:
            if msg.get("type") == "work":
                queue.report_task(msg["eq_task_id"], TYPE, msg["payload"])
    queue.close()


class EqSql:
    name = "eqsql"

    def __init__(self, base: str) -> None:
        _admin(base, "bench_drop_eqsql_database", "bench_create_eqsql_database")
        self.url = _with_db(base, "eqflow_bench_eqsql")
        schema = resources.files("eqsql").joinpath("workflow.sql").read_text()
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(schema)  # EQ-SQL's own schema file, as its create_eqsql_tables runs it
        self.queue = _eqsql_queue(self.url)

    def reset(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(query("peer_eqsql_truncate"))

    def _workers(self, count: int, batch: int) -> tuple[list[Any], Any]:
        ctx = mp.get_context("spawn")
        stop, ready = ctx.Event(), ctx.Semaphore(0)
        procs = [ctx.Process(target=_eqsql_worker, args=(self.url, batch, stop, ready), daemon=True)
                 for _ in range(count)]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.acquire()
        return procs, stop

    def submit(self, n: int) -> float:
        payloads = [json.dumps({"x": i}) for i in range(n)]
        t0 = time.perf_counter()
        _, futures = self.queue.submit_tasks(EXP, TYPE, payloads)
        elapsed = time.perf_counter() - t0
        assert len(futures) == n
        return n / elapsed

    def end_to_end(self, n: int, workers: int, batch: int) -> float:
        procs, stop = self._workers(workers, batch)
        try:
            t0 = time.perf_counter()
            _, futures = self.queue.submit_tasks(EXP, TYPE, ["{}"] * n)
            got = sum(1 for _ in self.queue.as_completed(futures, timeout=1800))
            elapsed = time.perf_counter() - t0
        finally:
            _stop_workers(procs, stop)
        assert got == n
        return n / elapsed

    def reprioritize(self, n: int) -> float:
        _, futures = self.queue.submit_tasks(EXP, TYPE, ["{}"] * n)
        prios = [(i * 7919) % 100_000 + 1 for i in range(n)]
        t0 = time.perf_counter()
        _, changed = self.queue.update_priorities(futures, prios)
        elapsed = time.perf_counter() - t0
        assert len(changed) == n
        return n / elapsed

    def latency(self, rounds: int) -> list[float]:
        procs, stop = self._workers(1, 1)
        samples = []
        try:
            for i in range(rounds + 3):
                t0 = time.perf_counter()
                _, fut = self.queue.submit_task(EXP, TYPE, str(i))
                fut.result(timeout=60)
                if i >= 3:
                    samples.append(time.perf_counter() - t0)
        finally:
            _stop_workers(procs, stop)
        return samples

    def me_workload(self, queued: int, claims: int) -> dict[str, float]:
        from eqsql.task_queues.core import Future

        with psycopg.connect(self.url, autocommit=True) as conn:
            ids = [r[0] for r in conn.execute(query("peer_eqsql_fill"),
                                              {"n": queued, "task_type": TYPE, "exp_id": EXP}).fetchall()]
        futures = [Future(self.queue, i) for i in ids]
        prios = [(i * 7919) % 1_000_003 + 1 for i in range(queued)]
        t0 = time.perf_counter()
        self.queue.update_priorities(futures, prios)
        t1 = time.perf_counter()
        for _ in range(claims):
            assert self.queue.query_task(TYPE, n=1, worker_pool="me", timeout=0.0)["type"] == "work"
        t2 = time.perf_counter()
        return {"reprioritize_s": t1 - t0, "claims_s": t2 - t1, "total_s": t2 - t0}

    def close(self) -> None:
        self.queue.close()


# -- PgQueuer ----------------------------------------------------------------------------------
async def _pgq_connect(url: str) -> Any:
    """PgQueuer on asyncpg, its first driver, when installed (the [bench] extra); else psycopg."""
    from pgqueuer import Queries

    if have("asyncpg"):
        import asyncpg
        from pgqueuer import AsyncpgDriver

        info = psycopg.conninfo.conninfo_to_dict(url)
        conn = await asyncpg.connect(host=info.get("host"), port=int(str(info.get("port", 5432))),
                                     user=info.get("user"), password=info.get("password"),
                                     database=info.get("dbname"))
        return conn, Queries(AsyncpgDriver(conn))
    from pgqueuer import PsycopgDriver

    aconn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    return aconn, Queries(PsycopgDriver(aconn))


def _pgq_worker(url: str, batch: int, stop: Any, ready: Any) -> None:
    async def main() -> None:
        from pgqueuer import QueueManager

        conn, queries = await _pgq_connect(url)
        manager = QueueManager(queries)

        @manager.entrypoint("bench")
        async def job(_: Any) -> None:
            return None

        running = asyncio.create_task(manager.run(batch_size=batch))
        ready.release()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        manager.shutdown.set()
        await running
        await conn.close()

    asyncio.run(main())


class PgQueuer:
    name = "pgqueuer"

    def __init__(self, base: str) -> None:
        _admin(base, "bench_drop_pgqueuer_database", "bench_create_pgqueuer_database")
        self.url = _with_db(base, "eqflow_bench_pgqueuer")

        async def install() -> None:
            conn, queries = await _pgq_connect(self.url)
            await queries.install()
            await conn.close()

        asyncio.run(install())

    def reset(self) -> None:
        pass  # finished jobs are deleted; the queue is empty between workloads

    def _workers(self, count: int, batch: int) -> tuple[list[Any], Any]:
        ctx = mp.get_context("spawn")
        stop, ready = ctx.Event(), ctx.Semaphore(0)
        procs = [ctx.Process(target=_pgq_worker, args=(self.url, batch, stop, ready), daemon=True)
                 for _ in range(count)]
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.acquire()
        time.sleep(0.5)  # the managers' first dequeue and LISTEN
        return procs, stop

    def submit(self, n: int) -> float:
        async def go() -> float:
            conn, queries = await _pgq_connect(self.url)
            payloads = [json.dumps({"x": i}).encode() for i in range(n)]
            t0 = time.perf_counter()
            ids = await queries.enqueue(["bench"] * n, payloads, [0] * n)
            elapsed = time.perf_counter() - t0
            await queries.clear_queue("bench")
            await conn.close()
            assert len(ids) == n
            return n / elapsed

        return asyncio.run(go())

    def drain(self, n: int, workers: int, batch: int) -> float:
        procs, stop = self._workers(workers, batch)
        try:
            async def go() -> float:
                conn, queries = await _pgq_connect(self.url)
                t0 = time.perf_counter()
                await queries.enqueue(["bench"] * n, [b"{}"] * n, [0] * n)
                with psycopg.connect(self.url, autocommit=True) as poll:
                    while (poll.execute(query("peer_pgqueuer_open")).fetchone() or (0,))[0]:
                        await asyncio.sleep(0.005)
                elapsed = time.perf_counter() - t0
                await conn.close()
                return n / elapsed

            return asyncio.run(go())
        finally:
            _stop_workers(procs, stop)

    def latency(self, rounds: int) -> list[float]:
        procs, stop = self._workers(1, 1)
        try:
            async def go() -> list[float]:
                from pgqueuer.core.completion import CompletionWatcher

                conn, queries = await _pgq_connect(self.url)
                samples = []
                async with CompletionWatcher(queries.driver, queries=queries) as watcher:
                    for i in range(rounds + 3):
                        t0 = time.perf_counter()
                        [jid] = await queries.enqueue("bench", str(i).encode())
                        await watcher.wait_for(jid)
                        if i >= 3:
                            samples.append(time.perf_counter() - t0)
                await conn.close()
                return samples

            return asyncio.run(go())
        finally:
            _stop_workers(procs, stop)

    def close(self) -> None:
        pass


# -- the run -----------------------------------------------------------------------------------
def _p(samples: list[float], q: float) -> float:
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(len(samples) * q))] * 1e3


def _systems(base: str, wanted: list[str]) -> tuple[list[Any], list[str]]:
    systems: list[Any] = [Eqflow(base)]
    skipped = []
    for peer, cls in (("eqsql", EqSql), ("pgqueuer", PgQueuer)):
        if peer in wanted:
            if have(peer):
                systems.append(cls(base))
            else:
                skipped.append(peer)
    return systems, skipped


def _one_round(system: Any, first: bool, n: int, workers: int, latency_rounds: int, me_queued: int,
               me_claims: int, note: Callable[[str, float], None], say: Callable[[str], None]) -> None:
    """Every workload the system takes part in, each from an empty queue."""
    system.reset()
    say(f"bulk submit {n}")
    note("bulk_submit_per_s", system.submit(n))
    for batch in (1, 8) if hasattr(system, "end_to_end") else ():
        system.reset()
        say(f"end to end, batch {batch}")
        note(f"end_to_end_batch{batch}_per_s", system.end_to_end(n, workers, batch))
    if hasattr(system, "drain"):
        system.reset()
        say("drain, batch 8")
        note("drain_batch8_per_s", system.drain(n, workers, 8))
    if hasattr(system, "reprioritize"):
        system.reset()
        say(f"reprioritize {n} queued")
        note("reprioritize_per_s", system.reprioritize(n))
    system.reset()
    say(f"latency x {latency_rounds}")
    lat = system.latency(latency_rounds)
    note("latency_p50_ms", _p(lat, 0.5))
    note("latency_p95_ms", _p(lat, 0.95))
    if hasattr(system, "me_workload") and me_queued and first:
        system.reset()
        say(f"ME workload: {me_queued} queued, reprioritize all, {me_claims} claims")
        for key, value in system.me_workload(me_queued, me_claims).items():
            note(f"me_{key}", value)
    system.reset()


def run(url: str | None = None, *, n: int = 5000, workers: int = 4, rounds: int = 2, latency_rounds: int = 30,
        me_queued: int = 100_000, me_claims: int = 1000, peers: list[str] | None = None,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda msg: None)
    base = resolve_url(url, migrate=False)
    load = os.getloadavg()[0]
    systems, skipped = _systems(base, peers if peers is not None else ["eqsql", "pgqueuer"])
    figures: dict[str, dict[str, list[float]]] = {s.name: {} for s in systems}
    try:
        say(f"commit ceiling: pgbench -N, {workers} clients")
        ceiling = pgbench_tps(base, workers)
        for r in range(rounds):
            for system in systems if r % 2 == 0 else systems[::-1]:  # alternate who goes first
                def note(key: str, value: float, name: str = system.name) -> None:
                    figures[name].setdefault(key, []).append(value)

                def tell(msg: str, label: str = f"round {r + 1}/{rounds} {system.name}") -> None:
                    say(f"{label}: {msg}")

                _one_round(system, r == 0, n, workers, latency_rounds, me_queued, me_claims, note, tell)
    finally:
        for system in systems:
            system.close()
    return {"tasks": n, "workers": workers, "rounds": rounds, "me_queued": me_queued, "me_claims": me_claims,
            "pgbench_tps": round(ceiling) if ceiling else None, "skipped": skipped,
            "figures": {k: {m: [round(v, 3) for v in vs] for m, vs in d.items()} for k, d in figures.items()},
            "load_before": load, "load_after": os.getloadavg()[0], "cpus": os.cpu_count()}


def table(result: dict[str, Any]) -> str:
    """The figures as a markdown table: range over rounds per system, eqflow's ratio to each peer."""
    figs = result["figures"]
    names = list(figs)
    peers = [p for p in names if p != "eqflow"]
    metrics = list(dict.fromkeys(m for d in figs.values() for m in d))
    head = "| workload | " + " | ".join(names) + " | " + " | ".join(f"eqflow vs {p}" for p in peers) + " |"
    lines = [head, "|" + "---|" * (1 + len(names) + len(peers))]
    for m in metrics:
        cells = []
        for s in names:
            vs = figs[s].get(m)
            cells.append("" if not vs else _fmt(min(vs)) if len(vs) == 1 or min(vs) == max(vs)
                         else f"{_fmt(min(vs))}–{_fmt(max(vs))}")
        ratios = []
        mine = figs["eqflow"].get(m)
        for p in peers:
            theirs = figs[p].get(m)
            if not mine or not theirs:
                ratios.append("")
                continue
            lower_better = m.startswith(("latency", "me_"))  # times; the others are rates
            per_round = [(t / e if lower_better else e / t)
                         for e, t in zip(mine, theirs, strict=False) if e and t]
            ratios.append(f"{min(per_round):.1f}–{max(per_round):.1f}×" if len(per_round) > 1
                          else f"{per_round[0]:.1f}×" if per_round else "")
        lines.append(f"| {m} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    if result.get("pgbench_tps"):
        b1 = figs["eqflow"].get("end_to_end_batch1_per_s") or [0]
        lines.append("")
        lines.append(f"commit ceiling (pgbench -N, {result['workers']} clients): {result['pgbench_tps']} TPS; "
                     f"eqflow batch 1 end to end: {statistics.median(b1):.0f}/s = "
                     f"{statistics.median(b1) / result['pgbench_tps']:.0%} of it")
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}"
