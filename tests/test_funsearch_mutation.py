"""eqflow.funsearch.mutation: the mutation sampler's candidates, determinism, crossover, size bound,
and (test-only, in-process) a short search that it improves a deletion-code greedy."""

from __future__ import annotations

import ast
import itertools
import math
import os
import random
import subprocess
import sys
from collections.abc import Callable

import pytest

from eqflow.funsearch.code import body_hash, function_source, parse_function, trim_completion
from eqflow.funsearch.mutation import MutationSampler, parse_signature
from eqflow.funsearch.samplers import SampleRequest, make_sampler
from eqflow.funsearch.sandbox import Limits, Sandbox
from eqflow.funsearch.spec import Spec

DELETION = "def priority(el: tuple[int, ...], n: int, s: int) -> float:"
CAP_SET = "def priority(el: tuple[int, ...], n: int) -> float:"
BIN_PACKING = "def priority(item: float, bins: np.ndarray) -> np.ndarray:"

PARENTS = {
    DELETION: ("    return 0.0\n", "    return -(sum(el) % (n + 1)) + s * 0.5\n"),
    CAP_SET: ("    return 0.0\n", "    return float(sum(x == 1 for x in el)) - n / 3.0\n"),
    BIN_PACKING: ("    return -(bins - item)\n", "    score = item / bins\n    return -score + 1.0\n"),
}


PARENTS_SOURCES = tuple(function_source(DELETION, body) for body in PARENTS[DELETION])


def request(header: str, bodies: tuple[str, ...], samples: int = 4, seed: int = 0) -> SampleRequest:
    parents = tuple(function_source(header, body) for body in bodies)
    return SampleRequest(prompt="", parents=parents, function_name="priority", header=header,
                         samples=samples, seed=seed)


def test_signature_kinds() -> None:
    deletion = parse_signature(DELETION)
    assert deletion.seqs == ("el",) and deletion.ints == ("n", "s") and not deletion.numpy
    bins = parse_signature(BIN_PACKING)
    assert bins.floats == ("item",) and bins.arrays == ("bins",) and bins.numpy


@pytest.mark.parametrize("header", [DELETION, CAP_SET, BIN_PACKING])
def test_candidates_parse_compile_and_keep_the_header(header: str) -> None:
    sampler = make_sampler({"type": "mutation"})
    for seed in range(25):
        result = sampler.sample(request(header, PARENTS[header], samples=4, seed=seed))
        assert len(result.bodies) == 4 and result.seconds > 0
        for body in result.bodies:
            assert body.startswith("    ") and body.endswith("\n")
            assert trim_completion(body, "priority", header) is not None
            source = function_source(header, body)
            compile(source, "<candidate>", "exec")
            function = parse_function(source)
            assert function is not None and function.name == "priority"
            assert ast.unparse(function.args) == ast.unparse(parse_function(header + "\n    pass\n").args)  # type: ignore[union-attr]


def test_same_seed_same_answer_other_seeds_differ() -> None:
    req = request(DELETION, PARENTS[DELETION], samples=6, seed=7)
    first = MutationSampler().sample(req).bodies
    assert MutationSampler().sample(req).bodies == first  # a fresh sampler: nothing cached
    answers = {tuple(MutationSampler().sample(request(DELETION, PARENTS[DELETION], 6, seed)).bodies)
               for seed in range(10)}
    assert len(answers) == 10
    bodies = {body for answer in answers for body in answer}
    assert len(bodies) >= 40  # 60 candidates, mostly distinct


def test_same_answer_in_another_process() -> None:
    """Workers are separate processes: string hashing (PYTHONHASHSEED) must not change answers."""
    script = ("from eqflow.funsearch.samplers import SampleRequest, make_sampler\n"
              f"req = SampleRequest('', {PARENTS_SOURCES!r}, 'priority', {DELETION!r}, 6, 11)\n"
              "print(repr(make_sampler({'type': 'mutation'}).sample(req).bodies))\n")
    answers = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(answers) == 1
    local = MutationSampler().sample(request(DELETION, PARENTS[DELETION], samples=6, seed=11)).bodies
    assert answers == {repr(local) + "\n"}


def test_no_parent_copy_and_no_duplicates_in_an_answer() -> None:
    sampler = MutationSampler()
    parent_hashes = {body_hash(body, DELETION) for body in PARENTS[DELETION]}
    for seed in range(20):
        bodies = sampler.sample(request(DELETION, PARENTS[DELETION], samples=4, seed=seed)).bodies
        hashes = [body_hash(body, DELETION) for body in bodies]
        assert len(set(hashes)) == len(hashes)
        assert not set(hashes) & parent_hashes


def test_crossover_uses_both_parents() -> None:
    sampler = make_sampler({"type": "mutation", "crossover_rate": 1.0})
    parents = ("    return el[0] * 1234.5 + n\n", "    return sum(el) - 6789.25 * s\n")
    both = 0
    for seed in range(40):
        for body in sampler.sample(request(DELETION, parents, samples=2, seed=seed)).bodies:
            both += "1234.5" in body and "6789.25" in body
    assert both >= 5
    # Without crossover, no candidate mixes the two.
    plain = make_sampler({"type": "mutation", "crossover_rate": 0.0, "weights": {"fresh": 0.0}})
    mixed = [body for seed in range(40) for body in plain.sample(request(DELETION, parents, 2, seed)).bodies
             if "1234.5" in body and "6789.25" in body]
    assert not mixed


def _size(body: str, header: str) -> int:
    function = parse_function(function_source(header, body))
    assert function is not None
    return sum(1 for _ in ast.walk(function))


@pytest.mark.parametrize("header", [DELETION, BIN_PACKING])
def test_size_stays_bounded_over_many_generations(header: str) -> None:
    sampler = MutationSampler(max_nodes=60)
    body = PARENTS[header][0]
    largest = 0
    for generation in range(150):
        bodies = sampler.sample(request(header, (body,), samples=2, seed=generation)).bodies
        body = max(bodies, key=lambda b: _size(b, header))  # always keep the biggest: pushes the bound
        largest = max(largest, _size(body, header))
    assert largest <= 60
    assert largest > 30  # it did grow


def test_unparsable_or_missing_parents_still_give_candidates() -> None:
    sampler = MutationSampler()
    for parents in [(), ("this is not python",)]:
        req = SampleRequest(prompt="", parents=parents, function_name="priority", header=CAP_SET, samples=3, seed=1)
        bodies = sampler.sample(req).bodies
        assert len(bodies) == 3
        for body in bodies:
            compile(function_source(CAP_SET, body), "<c>", "exec")


def test_config_is_checked() -> None:
    assert make_sampler({"type": "mutation", "max_nodes": 50}).name == "mutation"
    with pytest.raises(ValueError):
        make_sampler({"type": "mutation", "max_nodez": 50})
    with pytest.raises(ValueError):
        MutationSampler(weights={"teleport": 1.0})


# A short search. The candidates are untrusted code: they run in the Sandbox, never here.

def deletion_code_size(priority: Callable[..., float], n: int) -> int:
    """Greedy single-deletion code: words by (-priority, word), kept when their deletion balls are disjoint."""
    words = list(itertools.product((0, 1), repeat=n))
    balls = [frozenset(w[:i] + w[i + 1:] for i in range(n)) for w in words]
    scores = [float(priority(w, n, 1)) for w in words]
    if any(math.isnan(score) for score in scores):
        raise ValueError("nan priority")
    used: set[tuple[int, ...]] = set()
    size = 0
    for k in sorted(range(len(words)), key=lambda k: (-scores[k], words[k])):
        if used.isdisjoint(balls[k]):
            used |= balls[k]
            size += 1
    return size


def sandboxed_size(box: Sandbox, body: str) -> int | None:
    """The code size the bundled deletion_codes spec gives ``body`` (its one test), evaluated in
    the sandbox; None when the candidate fails."""
    result = box.evaluate(body)
    return int(next(iter(result.scores.values()))) if result.status == "ok" else None


def search(box: Sandbox, seed: int, budget: int, target: int) -> tuple[int, int]:
    """A small programs database: parents drawn from the best score clusters (softmax), shorter
    programs preferred inside a cluster; returns (best score, evaluations used)."""
    rng = random.Random(seed)
    sampler = MutationSampler()
    start = "    return 0.0\n"
    programs: dict[str, tuple[str, int]] = {body_hash(start, DELETION): (start, sandboxed_size(box, start) or 0)}
    evaluations = 1
    step = 0
    while evaluations < budget:
        step += 1
        clusters: dict[int, list[str]] = {}
        for body, score in programs.values():
            clusters.setdefault(score, []).append(body)
        scores = sorted(clusters)
        picked = []
        for _ in range(2):
            score = rng.choices(scores, weights=[math.exp(s - scores[-1]) for s in scores])[0]
            members = clusters[score]
            shortest = min(len(m) for m in members)
            picked.append((score, rng.choices(members, weights=[math.exp(-(len(m) - shortest) / 40)
                                                                for m in members])[0]))
        picked.sort(key=lambda p: p[0])
        req = request(DELETION, tuple(body for _, body in picked), samples=2, seed=seed * 10_007 + step)
        for raw in sampler.sample(req).bodies:
            evaluations += 1
            candidate = trim_completion(raw, "priority", DELETION)
            if candidate is None or body_hash(candidate, DELETION) in programs:
                continue
            result = sandboxed_size(box, candidate)
            if result is not None:
                programs[body_hash(candidate, DELETION)] = (candidate, result)
                if result >= target:
                    return result, evaluations
    return max(score for _, score in programs.values()), evaluations


def test_greedy_baseline() -> None:
    assert deletion_code_size(lambda el, n, s: 0.0, 6) == 8
    assert deletion_code_size(lambda el, n, s: -(sum(i * x for i, x in enumerate(el, 1)) % (n + 1)), 6) == 10


def test_search_improves_deletion_code_from_8_to_10() -> None:
    limits = Limits(timeout_s=2.0, memory_mb=256, max_procs=8)
    with Sandbox(Spec.load("deletion_codes"), [{"n": 6, "s": 1}], limits) as box:
        assert sandboxed_size(box, "    return 0.0\n") == 8  # where the search starts
        best, used = search(box, seed=1, budget=400, target=10)  # about 40 evaluations
    assert best == 10, f"best {best} after {used} evaluations"
