"""The programs database's selection rules (eqflow.funsearch.programs), without a database."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from eqflow.funsearch.programs import DatabaseSettings, Program, ProgramsView, softmax


def program(pid: int, island: int, score: float, body: str = "    return 0", test: str = "t") -> Program:
    return Program(pid, island, body, {test: score}, score, f"b{pid}")


def view(islands: int = 4, **settings: object) -> ProgramsView:
    return ProgramsView(DatabaseSettings(num_islands=islands, **settings), random.Random(1))  # type: ignore[arg-type]


def test_softmax_is_a_distribution_and_temperature_sharpens_it() -> None:
    logits = np.array([1.0, 2.0, 3.0])
    warm, cold = softmax(logits, 10.0), softmax(logits, 0.1)
    assert warm.sum() == pytest.approx(1.0) and cold.sum() == pytest.approx(1.0)
    assert cold[2] > 0.99 > warm[2]
    with pytest.raises(ValueError):
        softmax(np.array([1.0, float("nan")]), 1.0)


def test_temperature_follows_the_schedule_per_island() -> None:
    v = view(2, cluster_temperature_init=0.1, cluster_temperature_period=10)
    assert v.temperature(v.islands[0]) == pytest.approx(0.1)
    for pid in range(5):
        v.add(program(pid, 0, pid))
    assert v.temperature(v.islands[0]) == pytest.approx(0.1 * (1 - 5 / 10))
    assert v.temperature(v.islands[1]) == pytest.approx(0.1)
    for pid in range(5, 10):
        v.add(program(pid, 0, pid))
    assert v.temperature(v.islands[0]) == pytest.approx(0.1)  # n mod P wraps around


def test_parents_come_from_distinct_clusters_in_ascending_score_order() -> None:
    v = view(1, functions_per_prompt=2, cluster_temperature_init=100.0)  # warm: every cluster likely
    for pid, score in enumerate([5, 9, 7, 3]):
        v.add(program(pid, 0, score))
    seen = Counter()
    for _ in range(200):
        parents = v.choose_parents(0)
        assert len(parents) == 2
        assert parents[0].score < parents[1].score  # ascending: the best comes last
        assert parents[0].signature != parents[1].signature
        seen.update(p.score for p in parents)
    assert set(seen) == {3, 5, 7, 9}


def test_a_cold_temperature_picks_the_best_clusters() -> None:
    v = view(1, functions_per_prompt=2, cluster_temperature_init=0.01)
    for pid, score in enumerate([1, 2, 30, 31]):
        v.add(program(pid, 0, score))
    for _ in range(50):
        assert [p.score for p in v.choose_parents(0)] == [30, 31]


def test_within_a_cluster_shorter_programs_are_preferred() -> None:
    v = view(1, functions_per_prompt=1)
    short = Program(1, 0, "    return 1", {"t": 5}, 5, "a")
    long = Program(2, 0, "    return 1" + " + 0" * 200, {"t": 5}, 5, "b")
    v.add(short)
    v.add(long)
    picks = Counter(v.choose_parents(0)[0].program_id for _ in range(400))
    assert picks[1] > picks[2] * 1.5


def test_fewer_clusters_than_asked_gives_what_there_is() -> None:
    v = view(2, functions_per_prompt=3)
    v.add(program(1, 0, 4))
    assert [p.program_id for p in v.choose_parents(0)] == [1]
    assert v.choose_parents(1) == []


def test_reset_plan_clears_the_weaker_half_and_seeds_from_survivors() -> None:
    v = view(6)
    for island, score in enumerate([10, 3, 8, 1, 9, 2]):
        v.add(program(island + 1, island, score))
    weak, founders = v.plan_reset()
    assert sorted(weak) == [1, 3, 5]  # scores 3, 1, 2
    assert set(founders) == set(weak)
    assert all(f.island in (0, 2, 4) for f in founders.values())


def test_reset_is_due_by_size_or_by_time() -> None:
    v = view(2, reset_programs=2, reset_period_s=100.0)
    assert v.reset_due(0.0) is None
    v.add(program(1, 0, 1))
    v.add(program(2, 0, 2, body="    return 2"))
    assert v.reset_due(0.0) is None  # island 1 still has fewer
    v.add(program(3, 1, 1))
    v.add(program(4, 1, 2, body="    return 3"))
    assert "at least 2" in (v.reset_due(0.0) or "")
    assert "100" in (view(2, reset_period_s=100.0).reset_due(100.0) or "")
