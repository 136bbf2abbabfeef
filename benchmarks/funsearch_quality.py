"""How good is FunSearch on eqflow with the mutation sampler? The real engine on the real
database, real sampler and evaluator pools, the sandboxed evaluator, deletion-correcting codes.

1. Quality: ``--seeds`` seeds, s = 1, n = 6, 7, 8, at most ``--evaluations`` evaluations per run,
   stopping when one program reaches the Varshamov-Tenengolts sizes 10/16/30 everywhere. Three
   parent-selection strategies run seed by seed, interleaved, on the same pools:
   ``funsearch`` (10 islands, clusters, temperature), ``hill_climb`` (one island, always its best
   program) and ``random`` (always the spec's own function: random search over the same
   mutations). Each with the mutation sampler's two priors: ``uniform`` (the default; every term of
   a kind equally likely: it knows nothing of the problem) and ``tuned`` (term weights set by hand
   while tuning on deletion codes: problem knowledge, shown for comparison). Reported: seeds
   reaching the targets, median evaluations to reach them, and the sampler's sandbox runs per
   evaluation (probing candidates on inputs made up from the signature; nothing is scored there,
   so they are not evaluations).
2. Longer run: FunSearch for ``--long-seconds`` on s = 1, n = 9..11 and s = 2, n = 7..10; the
   largest code found per test beside VT / best known.
3. Evaluator throughput: the same ``--throughput-tasks`` candidate bodies evaluated by a pool of
   1 and of 2 workers (evaluations per minute).

    python benchmarks/funsearch_quality.py --seeds 20 --evaluations 500 --out out/funsearch-bench

Progress to stderr, a Markdown summary at the end, one JSON line on stdout; ``--out`` gets
results.json and success.png (share of seeds at the targets against evaluations).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from eqflow.config import WorkflowConfig
from eqflow.db.resolve import resolve_url
from eqflow.funsearch.engine import FunSearch
from eqflow.funsearch.samplers import SampleRequest, make_sampler
from eqflow.funsearch.spec import Spec, test_key
from eqflow.queue import LocalTaskQueue
from eqflow.workflows.runkit import PoolKeeper

SAMPLE, EVALUATE = 910, 911  # task types of their own, so no other pool takes the work
STRATEGIES = ("funsearch", "hill_climb", "random")
QUALITY_TESTS = [{"n": n, "s": 1} for n in (6, 7, 8)]
COLORS = {"funsearch": "tab:blue", "hill_climb": "tab:orange", "random": "tab:green"}
LINES = {"uniform": "-", "tuned": "--"}
LONG_TESTS = [{"n": n, "s": 1} for n in (9, 10, 11)] + [{"n": n, "s": 2} for n in (7, 8, 9, 10)]


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def config(url: str, out: Path, evaluators: int, prior: str = "uniform", **funsearch: Any) -> WorkflowConfig:
    return WorkflowConfig.model_validate({
        "dbs": {"main": {"type": "url", "url": url}},
        "pools": {"samplers": {"type": "local", "fn": "eqflow.funsearch.tasks:sample", "workers": 1,
                               "idle_exit": 600},
                  "evaluators": {"type": "local", "fn": "eqflow.funsearch.tasks:evaluate", "workers": evaluators,
                                 "idle_exit": 600}},
        "tasks": {"sample": {"type": SAMPLE, "pools": ["samplers"]},
                  "evaluate": {"type": EVALUATE, "pools": ["evaluators"]}},
        "funsearch": {"sampler": {"type": "mutation", "prior": prior}, "samples_per_prompt": 4, **funsearch},
        "output_dir": str(out)})


def quality_run(queue: LocalTaskQueue, url: str, out: Path, tag: str, strategy: str, prior: str, seed: int,
                evaluations: int, evaluators: int, islands: int, reduce: str) -> dict[str, Any]:
    cfg = config(url, out, evaluators, prior, tests=QUALITY_TESTS, targets=[10, 16, 30], optimal_solution_programs=0,
                 max_evaluations=evaluations, num_islands=islands if strategy == "funsearch" else 1,
                 selection=strategy, reduce=reduce)
    cfg = cfg.model_copy(update={"seed": seed})
    exp_id = f"{tag}-{strategy}-{prior}-{seed}"
    started = time.monotonic()
    engine = FunSearch(queue, cfg, exp_id, out=out / exp_id, progress=False, start_pools=False)
    stop = engine.run()
    reached = queue.events(exp_id, kind="targets_reached")
    best = engine.view.best
    return {"strategy": strategy, "prior": prior, "seed": seed, "reached": bool(reached),
            "evaluations_to_targets": reached[0].data["evaluated"] if reached else None,
            "evaluated": engine.counters.evaluated, "best_scores": best.scores if best else None,
            "seconds": round(time.monotonic() - started, 1), "stop": stop.reason,
            "probe_runs": probe_runs(queue, exp_id)}


def probe_runs(queue: LocalTaskQueue, exp_id: str) -> int:
    """Sandbox runs the sampler spent probing candidates on made-up inputs (not evaluations: no
    candidate is scored there), summed over the run's sample tasks."""
    with queue.db.connection() as conn:
        rows = conn.execute("SELECT result FROM tasks WHERE exp_id = %s AND task_type = %s AND result IS NOT NULL",
                            (exp_id, SAMPLE)).fetchall()
    return sum(int(json.loads(row[0]).get("sandbox_runs") or 0) for row in rows)


def long_run(queue: LocalTaskQueue, url: str, out: Path, tag: str, seconds: float, evaluators: int) -> dict[str, Any]:
    spec = Spec.load("deletion_codes")
    # Targets: the best known size of every test, so the run stops early only if it finds them all.
    known = [spec.known[test_key(t)] for t in LONG_TESTS]
    cfg = config(url, out, evaluators, tests=LONG_TESTS, targets=known, max_seconds=seconds, num_islands=10,
                 reduce="average", reset_period_s=max(60.0, seconds / 4))
    exp_id = f"{tag}-long"
    engine = FunSearch(queue, cfg, exp_id, out=out / exp_id, progress=False, start_pools=False)
    stop = engine.run()
    best_per_test: dict[str, float] = {}
    for row in queue.db.fetch_all("fs_all_programs", {"exp_id": exp_id}):
        for key, value in row[6].items():
            best_per_test[key] = max(best_per_test.get(key, 0.0), value)
    lex = {test_key(t): v for t, v in zip(LONG_TESTS, [42, 71, 125, 5, 6, 9, 13], strict=True)}  # priority = 0
    rows = [{**t, "found": best_per_test.get(test_key(t)), "lexicographic": lex[test_key(t)],
             "known": spec.known.get(test_key(t))} for t in LONG_TESTS]
    return {"seconds": seconds, "evaluated": engine.counters.evaluated, "stop": stop.reason, "sizes": rows}


def throughput(queue: LocalTaskQueue, url: str, out: Path, tag: str, tasks: int) -> dict[str, Any]:
    spec = Spec.load("deletion_codes")
    sampler = make_sampler({"type": "mutation"})
    source = f"{spec.header}\n{spec.initial_body}"
    bodies: list[str] = []
    seed = 0
    while len(bodies) < tasks:  # candidates as the engine would see them: mutations of mutations
        parents = (source,) if not bodies else (f"{spec.header}\n{bodies[-1]}",)
        request = SampleRequest(prompt="", parents=parents, function_name=spec.function_name, header=spec.header,
                                samples=4, seed=seed)
        bodies += sampler.sample(request).bodies
        seed += 1
    payload = {"spec_name": spec.name, "spec": spec.text, "tests": QUALITY_TESTS,
               "limits": {"timeout_s": 10.0, "memory_mb": 1024}}
    figures: dict[str, Any] = {}
    for workers in (1, 2):
        exp_id = f"{tag}-throughput-{workers}"
        cfg = config(url, out, workers)
        keeper = PoolKeeper(queue, cfg, exp_id, out / exp_id)
        keeper.start("evaluate", "evaluators", reason="throughput")
        # Warm: the first task of each worker starts its sandbox server.
        warm = queue.submit_many(exp_id, EVALUATE, [json.dumps({**payload, "body": b}) for b in bodies[:workers]])
        for future in warm:
            future.result(timeout=120)
        started = time.monotonic()
        futures = queue.submit_many(exp_id, EVALUATE, [json.dumps({**payload, "body": b}) for b in bodies[:tasks]])
        for future in futures:
            future.result(timeout=600)
        elapsed = time.monotonic() - started
        keeper.stop_all()
        figures[f"workers_{workers}"] = {"evaluations": tasks, "seconds": round(elapsed, 2),
                                         "per_minute": round(tasks / elapsed * 60)}
        say(f"[throughput] {workers} worker(s): {tasks} evaluations in {elapsed:.1f} s "
            f"= {tasks / elapsed * 60:.0f}/min")
    figures["speedup"] = round(figures["workers_1"]["seconds"] / figures["workers_2"]["seconds"], 2)
    return figures


def summarise(runs: list[dict[str, Any]], evaluations: int) -> dict[str, Any]:
    table = {}
    for label in dict.fromkeys(f"{r['strategy']} / {r['prior']}" for r in runs):
        mine = [r for r in runs if f"{r['strategy']} / {r['prior']}" == label]
        hits = [r["evaluations_to_targets"] for r in mine if r["reached"]]
        table[label] = {"seeds": len(mine), "reached": len(hits),
                           "median_evaluations": statistics.median(hits) if hits else None,
                           "max_evaluations": max(hits) if hits else None,
                           "median_seconds": statistics.median(r["seconds"] for r in mine),
                           "probe_runs_per_evaluation": round(sum(r.get("probe_runs", 0) for r in mine)
                                                              / max(1, sum(r["evaluated"] for r in mine)), 2)}
    return table


def plot(runs: list[dict[str, Any]], evaluations: int, path: Path) -> None:
    import matplotlib.pyplot as plt

    from eqflow.workflows.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label in dict.fromkeys(f"{r['strategy']} / {r['prior']}" for r in runs):
        mine = [r for r in runs if f"{r['strategy']} / {r['prior']}" == label]
        xs = list(range(0, evaluations + 1, max(1, evaluations // 100)))
        ys = [sum(1 for r in mine if r["reached"] and r["evaluations_to_targets"] <= x) / len(mine) for x in xs]
        strategy, prior = label.split(" / ")
        ax.step(xs, ys, where="post", label=label, color=COLORS.get(strategy), linestyle=LINES.get(prior, ":"))
    ax.set_xlabel("evaluations")
    ax.set_ylabel("share of seeds with 10/16/30 (n = 6, 7, 8; s = 1)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("FunSearch on eqflow, mutation sampler: reaching the VT sizes")
    save_figure(fig, path)


def markdown(table: dict[str, Any], long: dict[str, Any] | None, speed: dict[str, Any] | None) -> str:
    lines = ["| strategy / prior | seeds at 10/16/30 | median evaluations | worst | median s/run "
             "| sampler probe runs / evaluation |", "|---|---|---|---|---|---|"]
    for strategy, row in table.items():
        lines.append(f"| {strategy} | {row['reached']}/{row['seeds']} | {row['median_evaluations']} | "
                     f"{row['max_evaluations']} | {row['median_seconds']} | {row['probe_runs_per_evaluation']} |")
    if long:
        lines += ["", f"Longer run ({long['seconds']:g} s budget, {long['evaluated']} evaluations; stopped: "
                      f"{long['stop']}):", "",
                  "| n | s | found | lexicographic | VT / best known |", "|---|---|---|---|---|"]
        for row in long["sizes"]:
            found = "" if row["found"] is None else int(row["found"])
            lines.append(f"| {row['n']} | {row['s']} | {found} | {row['lexicographic']} | {row['known']} |")
    if speed:
        lines += ["", f"Evaluator throughput: 1 worker {speed['workers_1']['per_minute']}/min, "
                      f"2 workers {speed['workers_2']['per_minute']}/min (x{speed['speedup']})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None, help="database (default: the embedded cluster)")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--evaluations", type=int, default=500, help="budget per run")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one on (unseen seeds)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--evaluators", type=int, default=2, help="evaluator workers")
    parser.add_argument("--priors", default="uniform,tuned",
                        help="mutation sampler priors: uniform (knows nothing of the problem), tuned (term weights "
                             "set by hand on deletion codes, for comparison)")
    parser.add_argument("--islands", type=int, default=10, help="islands of the funsearch strategy")
    parser.add_argument("--reduce", default="last", choices=["last", "average", "weighted"],
                        help="how the per-test sizes combine into a program's score")
    parser.add_argument("--long-seconds", type=float, default=300.0, help="the longer run (0: skip it)")
    parser.add_argument("--throughput-tasks", type=int, default=200, help="0: skip the throughput part")
    parser.add_argument("--out", default="out/funsearch-bench")
    args = parser.parse_args(argv)
    strategies = [s for s in args.strategies.split(",") if s]
    priors = [p for p in args.priors.split(",") if p]
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; known: {', '.join(STRATEGIES)}")
    url = resolve_url(args.url, announce=say)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"fsq-{uuid.uuid4().hex[:6]}"
    results: dict[str, Any] = {"tag": tag, "seeds": args.seeds, "first_seed": args.first_seed,
                               "evaluations": args.evaluations, "islands": args.islands, "reduce": args.reduce}
    with LocalTaskQueue(url) as queue:
        runs: list[dict[str, Any]] = []
        if (args.seeds and strategies) or args.long_seconds > 0:
            cfg = config(url, out, args.evaluators)
            keeper = PoolKeeper(queue, cfg, f"{tag}-pools", out / "pools")
            keeper.start("sample", "samplers", reason="benchmark")
            keeper.start("evaluate", "evaluators", reason="benchmark")
            try:
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    for prior, strategy in itertools.product(priors, strategies):
                        run = quality_run(queue, url, out, tag, strategy, prior, seed, args.evaluations,
                                          args.evaluators, args.islands, args.reduce)
                        runs.append(run)
                        say(f"[quality] seed {seed:2d} {strategy:<10} {prior:<7} reached={run['reached']!s:<5} "
                            f"after {run['evaluations_to_targets']} evaluations ({run['seconds']} s, "
                            f"{run['probe_runs']} probe runs)")
                if args.long_seconds > 0:
                    results["long"] = long_run(queue, url, out, tag, args.long_seconds, args.evaluators)
            finally:
                keeper.stop_all()
            if runs:
                results["runs"] = runs
                results["quality"] = summarise(runs, args.evaluations)
                plot(runs, args.evaluations, out / "success.png")
        if args.throughput_tasks:
            results["throughput"] = throughput(queue, url, out, tag, args.throughput_tasks)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    say(markdown(results.get("quality", {}), results.get("long"), results.get("throughput")))
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
