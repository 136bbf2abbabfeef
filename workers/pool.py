"""The pool runtime: claims tasks of its types and runs them on N concurrent workers.

It keeps at most ``batch_size`` tasks in hand and asks for more once ``threshold`` slots are
free, heartbeats its leases, reports results in batches, obeys stop requests (drain or now)
and, on SIGTERM/SIGINT, returns unfinished tasks to the queue before it exits.

    python -m eqflow.workers.pool --types 1 --fn eqflow.workers.tasks:ackley --workers 4
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib
import logging
import multiprocessing as mp
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from eqflow.models import ClaimedTask, StopMode
from eqflow.queue import LocalTaskQueue

log = logging.getLogger("eqflow.pool")


def load_function(spec: str) -> Callable[[str], str]:
    """``package.module:function`` → the callable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"task function must be 'module:function', got {spec!r}")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise ValueError(f"{spec} is not callable")
    return fn  # type: ignore[no-any-return]


def _run_task(spec: str, payload: str) -> tuple[bool, str]:
    """Runs in a worker process: (ok, result or traceback)."""
    try:
        return True, load_function(spec)(payload)
    except BaseException:  # the worker must survive any task error
        return False, traceback.format_exc()


@dataclass
class PoolConfig:
    task_types: list[int]
    fn: str
    name: str = "pool"
    n_workers: int = 1
    batch_size: int = 0  # 0: same as n_workers
    threshold: int = 1
    heartbeat_s: float = 5.0
    idle_exit_s: float | None = None  # exit after this long with nothing to do


class Pool:
    def __init__(self, queue: LocalTaskQueue, cfg: PoolConfig) -> None:
        self.queue = queue
        self.cfg = cfg
        self.batch_size = cfg.batch_size or cfg.n_workers
        if not 1 <= cfg.threshold <= self.batch_size:
            raise ValueError(f"threshold must be in 1..batch_size ({self.batch_size}), got {cfg.threshold}")
        self.in_hand: dict[cf.Future[tuple[bool, str]], ClaimedTask] = {}
        self._stop_mode: StopMode | None = None
        self._signal = threading.Event()
        self.pool_id = 0

    def request_stop(self, mode: StopMode) -> None:
        if self._stop_mode is not StopMode.NOW:
            self._stop_mode = mode
        self._signal.set()

    def run(self) -> int:
        """Run until stopped; returns the number of tasks completed."""
        cfg = self.cfg
        self.pool_id = self.queue.register_pool(cfg.name, cfg.task_types, n_workers=cfg.n_workers,
                                                info={"fn": cfg.fn, "batch_size": self.batch_size})
        pool_name = f"{cfg.name}-{self.pool_id}"
        stop_inbox = self.queue.pool_inbox(self.pool_id)
        executor = cf.ProcessPoolExecutor(cfg.n_workers, mp_context=mp.get_context("spawn"))
        done_count = 0
        last_beat = 0.0
        idle_since = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now - last_beat >= cfg.heartbeat_s or stop_inbox.wait(0)[2]:
                    mode = self.queue.pool_heartbeat(self.pool_id)
                    if mode is not None:
                        self.request_stop(mode)
                    if self.in_hand:
                        self.queue.extend_leases(self.in_hand.values())
                    last_beat = now
                if self._stop_mode is StopMode.NOW:
                    break
                free = self.batch_size - len(self.in_hand)
                draining = self._stop_mode is StopMode.DRAIN
                if free >= cfg.threshold:
                    wait_s = 0.0 if self.in_hand else min(cfg.heartbeat_s, 1.0)
                    claimed = self.queue.claim(cfg.task_types, n=free, pool=pool_name, timeout=wait_s)
                    for task in claimed:
                        self.in_hand[executor.submit(_run_task, cfg.fn, task.payload)] = task
                    if claimed:
                        idle_since = time.monotonic()
                if not self.in_hand:
                    if draining:
                        break
                    if cfg.idle_exit_s is not None and time.monotonic() - idle_since > cfg.idle_exit_s:
                        break
                    continue
                finished, _ = cf.wait(list(self.in_hand), timeout=0.2, return_when=cf.FIRST_COMPLETED)
                done_count += self._report(finished)
        finally:
            self._shutdown(executor)
            stop_inbox.close()
        return done_count

    def _report(self, finished: set[cf.Future[tuple[bool, str]]]) -> int:
        results: list[tuple[ClaimedTask, str]] = []
        failures: list[tuple[ClaimedTask, str]] = []
        for fut in finished:
            task = self.in_hand.pop(fut)
            try:
                ok, value = fut.result()
            except Exception:  # a worker process died
                ok, value = False, traceback.format_exc()
            (results if ok else failures).append((task, value))
        if results:
            self.queue.report(results)
        if failures:
            self.queue.report_failure(failures)
        return len(results)

    def _shutdown(self, executor: cf.ProcessPoolExecutor) -> None:
        if self.in_hand:
            returned = self.queue.release(self.in_hand.values())
            log.info("returned unfinished tasks", extra={"count": len(returned)})
            self.in_hand.clear()
        executor.shutdown(wait=False, cancel_futures=True)
        self.queue.pool_stopped(self.pool_id)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eqflow pool run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", type=int, nargs="+", required=True, help="task types to claim")
    parser.add_argument("--fn", required=True, help="task function, module:function")
    parser.add_argument("--name", default="pool", help="pool name (the pool id is appended)")
    parser.add_argument("--workers", type=int, default=1, help="concurrent worker processes")
    parser.add_argument("--batch-size", type=int, default=0, help="most tasks in hand (default: workers)")
    parser.add_argument("--threshold", type=int, default=1, help="free slots before asking for more")
    parser.add_argument("--db", default=None, help="database URL (default: $EQFLOW_DB_URL or embedded)")
    parser.add_argument("--lease", type=float, default=60.0, help="lease seconds")
    parser.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    load_function(args.fn)  # fail fast on a bad name
    queue = LocalTaskQueue(args.db, lease_s=args.lease)
    pool = Pool(queue, PoolConfig(args.types, args.fn, args.name, args.workers, args.batch_size,
                                  args.threshold, heartbeat_s=max(0.5, args.lease / 4),
                                  idle_exit_s=args.idle_exit))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: pool.request_stop(StopMode.NOW))
    done = pool.run()
    log.info("pool exiting", extra={"completed": done})
    queue.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
