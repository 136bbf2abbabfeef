"""A FunSearch run's outputs, drawn from the database (never from the ME's memory), so a resumed
or finished run draws the same files again:

- ``best_program.py``: the spec with the best function in place (runnable as the spec is);
  ``islands/island_<i>.py``: the best of each island's current version;
- ``sizes.csv`` / ``sizes.md``: the best program's score per test beside the best known value;
- ``progress.png``: best score against evaluations and against time;
- ``programs.csv``: every registered program; ``summary.json``.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from eqflow.funsearch.spec import Spec, test_key
from eqflow.workflows.runkit import write_json, write_text_atomic


def write_outputs(db: Any, exp_id: str, spec: Spec, tests: list[dict[str, Any]], out: Path,
                  extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    programs = db.fetch_all("fs_all_programs", {"exp_id": exp_id})
    current = {row[0] for row in db.fetch_all("fs_current_programs", {"exp_id": exp_id})}
    best = max(programs, key=_rank, default=None)
    if best is not None:
        write_text_atomic(out / "best_program.py", _program_file(spec, best))
    per_island: dict[int, tuple[Any, ...]] = {}
    for row in programs:
        if row[0] in current and (row[1] not in per_island or _rank(row) > _rank(per_island[row[1]])):
            per_island[row[1]] = row
    if per_island:
        (out / "islands").mkdir(exist_ok=True)
        for island, row in sorted(per_island.items()):
            write_text_atomic(out / "islands" / f"island_{island}.py", _program_file(spec, row))
    sizes = _sizes(spec, tests, best[6] if best is not None else {})
    write_text_atomic(out / "sizes.csv", _csv(sizes))
    write_text_atomic(out / "sizes.md", _markdown(sizes))
    write_text_atomic(out / "programs.csv", _programs_csv(programs))
    evaluations = db.fetch_all("fs_evaluations_in_order", {"exp_id": exp_id})
    _plot_progress(evaluations, out / "progress.png", spec.name)
    statuses = {status: {"count": count, "cpu_s": round(float(cpu), 2)}
                for status, count, cpu in db.fetch_all("fs_evaluation_statuses", {"exp_id": exp_id})}
    candidates = dict(db.fetch_all("fs_candidate_states", {"exp_id": exp_id}))
    summary = {
        "exp_id": exp_id, "spec": spec.name, "tests": tests,
        "evaluated": sum(v["count"] for k, v in statuses.items() if k != "in flight"),
        "evaluations": statuses, "candidates": candidates, "programs": len(programs),
        "best_score": best[7] if best is not None else None,
        "best_scores": best[6] if best is not None else None,
        "best_program_id": best[0] if best is not None else None,
        "sizes": sizes, **(extra or {})}
    write_json(out / "summary.json", summary)
    return summary


def _rank(row: tuple[Any, ...]) -> tuple[float, float, int]:
    """As Program.rank: score, then the total over the tests, then the earlier program."""
    return (row[7], sum(row[6].values()), -row[0])


def _program_file(spec: Spec, row: tuple[Any, ...]) -> str:
    program_id, island, version, body, _, _, scores, score = row[:8]
    head = (f"# FunSearch program {program_id} (island {island}, version {version}): score {score:g}\n"
            f"# per test: {json.dumps(scores, sort_keys=True)}\n")
    return head + spec.program(body)


def _sizes(spec: Spec, tests: list[dict[str, Any]], scores: dict[str, float]) -> list[dict[str, Any]]:
    known = spec.known
    rows = []
    for test in tests:
        key = test_key(test)
        size = scores.get(key)
        rows.append({**test, "size": _num(size), "known": _num(known.get(key))})
    return rows


def _num(value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def _markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = ["" if row[c] is None else str(row[c]) for c in columns]
        if row.get("size") is not None and row.get("known") is not None and row["size"] >= row["known"]:
            cells[columns.index("size")] = f"**{cells[columns.index('size')]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _programs_csv(programs: list[tuple[Any, ...]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["program_id", "island", "island_version", "score", "scores", "parents", "sampler",
                     "behaviour_hash", "created_at", "body"])
    for pid, island, version, body, _, behaviour, scores, score, parents, sampler, created in programs:
        writer.writerow([pid, island, version, score, json.dumps(scores, sort_keys=True),
                         " ".join(map(str, parents)), sampler, behaviour, created.isoformat(), body])
    return buffer.getvalue()


def _plot_progress(evaluations: list[tuple[Any, ...]], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    from eqflow.workflows.plots import save_figure

    fig, (by_count, by_time) = plt.subplots(1, 2, figsize=(10, 3.8))
    scored = [(at, score) for at, status, score, _ in evaluations]
    if scored:
        start: datetime = scored[0][0]
        best, xs, ts, ys = None, [], [], []
        for n, (at, score) in enumerate(scored, 1):
            if score is not None and (best is None or score > best):
                best = score
            if best is not None:
                xs.append(n)
                ts.append((at - start).total_seconds())
                ys.append(best)
        by_count.step(xs, ys, where="post")
        by_time.step(ts, ys, where="post")
    by_count.set_xlabel("evaluations")
    by_time.set_xlabel("seconds since the first evaluation")
    from matplotlib.ticker import MaxNLocator

    integral = all(score is None or float(score).is_integer() for _, score in scored)
    for ax in (by_count, by_time):
        ax.set_ylabel("best score")
        ax.grid(alpha=0.3)
        if integral:  # code sizes, cap sizes: no 15.25
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"FunSearch ({title}): best score so far")
    save_figure(fig, path)
