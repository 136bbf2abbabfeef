"""The mutation sampler's probing: candidates (and parents) run only in a sandbox, on inputs made up
from the signature; fingerprints are orders; what orders like a parent or orders nothing is skipped."""

from __future__ import annotations

import os
import select
import socket
import uuid
from pathlib import Path

import pytest

from eqflow.funsearch.code import function_source
from eqflow.funsearch.mutation import MutationSampler, parse_signature
from eqflow.funsearch.mutation_probe import Prober, not_worth_evaluating, probe_calls, probe_kinds, prober
from eqflow.funsearch.samplers import SampleRequest, make_sampler

REPO = Path(__file__).resolve().parent.parent
DELETION = "def priority(el: tuple[int, ...], n: int, s: int) -> float:"
BIN_PACKING = "def priority(item: float, bins: np.ndarray) -> np.ndarray:"


@pytest.fixture(scope="module")
def probes() -> Prober:
    return prober(DELETION, "priority", parse_signature(DELETION))


def request(header: str, bodies: tuple[str, ...], samples: int = 4, seed: int = 0) -> SampleRequest:
    return SampleRequest(prompt="", parents=tuple(function_source(header, b) for b in bodies),
                         function_name="priority", header=header, samples=samples, seed=seed)


def test_fingerprints_are_orders(probes: Prober) -> None:
    same = probes.fingerprint("    return sum(el)\n")
    assert same is not None and not not_worth_evaluating(same)
    assert probes.fingerprint("    return 2 * sum(el) + 1\n") == same  # the same order
    assert probes.fingerprint("    return -sum(el)\n") != same
    weighted = probes.fingerprint("    return sum(i * x for i, x in enumerate(el, 1)) % (n + 1)\n")
    assert weighted is not None and weighted != same
    nothing = probes.fingerprint("    return len(el) + n\n")  # fixed within a group
    assert nothing is not None and not_worth_evaluating(nothing)
    broken = probes.fingerprint("    return el[100]\n")  # fails everywhere
    assert broken is not None and not_worth_evaluating(broken)
    some = probes.fingerprint("    return 1 / (sum(el) - 2)\n")  # fails on some inputs of a size
    assert some is not None and not_worth_evaluating(some)
    sized = probes.fingerprint("    return el[4] + sum(el)\n")  # fails only on sizes it cannot take
    assert sized is not None and not not_worth_evaluating(sized)
    assert probes.fingerprint("    while True:\n        pass\n") is None  # times out: not judged


def test_inputs_come_from_the_signature_only() -> None:
    kinds = probe_kinds(parse_signature(DELETION), DELETION)
    assert kinds == ["seq", "int", "int"]
    groups = probe_calls(kinds)
    assert probe_calls(kinds) == groups  # fixed: fingerprints compare across requests
    for calls in groups:
        assert len({len(call[0]) for call in calls}) == 1 and len({call[1] for call in calls}) == 1
    assert probe_kinds(parse_signature(BIN_PACKING), BIN_PACKING) == ["float", "array"]
    only_ints = "def priority(n: int, k: int) -> float:"
    assert probe_kinds(parse_signature(only_ints), only_ints) is None  # nothing varies: not probed
    unknown = "def priority(x: Widget, n: int) -> float:"
    assert probe_kinds(parse_signature(unknown), unknown) is None


def test_numpy_signatures_are_probed() -> None:
    probes = prober(BIN_PACKING, "priority", parse_signature(BIN_PACKING))
    first = probes.fingerprint("    return -(bins - item)\n")
    assert first is not None and probes.fingerprint("    return 3.0 * (item - bins) - 1.0\n") == first
    assert probes.fingerprint("    return bins - item\n") != first


def test_candidates_misbehaving_while_probed_stay_in_the_sandbox(probes: Prober) -> None:
    if probes._open() is None:
        pytest.skip("no sandbox here")
    name = f"eqflow-mutation-probe-{uuid.uuid4().hex}"
    in_repo, in_tmp = REPO / name, Path("/tmp") / name
    box = probes._sandbox
    assert box is not None
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        bodies = [f"    open({str(in_repo)!r}, 'w').write('x')\n    return sum(el)\n",
                  f"    open({str(in_tmp)!r}, 'w').write('x')\n    return sum(el) * 3\n",
                  f"    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n"
                  "    return sum(el) * 5\n",
                  "    import os\n    os.environ['EQFLOW_PROBE_MARK'] = '1'\n    return el[0] - n\n",
                  "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return el[1]\n"]
        for body in bodies:
            probes.fingerprint(body)
        if box.isolation_info.no_network:
            assert not select.select([server], [], [], 0)[0], "a probed candidate reached the host's listener"
    if box.isolation_info.readonly_filesystem:
        assert not in_repo.exists() and not in_tmp.exists()
    assert "EQFLOW_PROBE_MARK" not in os.environ  # it ran in another process
    assert probes.fingerprint("    return sum(el) - 7\n") == probes.fingerprint("    return sum(el)\n")  # still works


def test_untrusted_parents_run_only_in_the_sandbox() -> None:
    """The sampler probes its parents too: a parent that would change the sampler's process if it
    ran there changes nothing."""
    parents = ("    import os\n    os.environ['EQFLOW_PROBE_PARENT'] = '1'\n    return sum(el) % (n + 1)\n",
               "    return -sum(el)\n")
    sampler = MutationSampler()
    for seed in range(5):
        result = sampler.sample(request(DELETION, parents, samples=4, seed=seed))
        assert len(result.bodies) == 4 and result.sandbox_runs > 0
    assert "EQFLOW_PROBE_PARENT" not in os.environ


def test_sampler_skips_candidates_ordering_like_a_parent_or_nothing(probes: Prober) -> None:
    parents = ("    return 0.0\n", "    return -(sum(el) % (n + 2)) + s * 0.25\n")  # probed by no other test
    known = {probes.fingerprint(body) for body in parents}
    runs = 0
    for seed in range(10):
        result = make_sampler({"type": "mutation"}).sample(request(DELETION, parents, samples=4, seed=seed))
        runs += result.sandbox_runs
        prints = [probes.fingerprint(body) for body in result.bodies]
        found = [p for p in prints if p is not None]
        assert len(set(found)) == len(found) and not set(found) & known
        assert not any(not_worth_evaluating(p) for p in found)
    assert 0 < runs < 400  # at most about one probe per candidate given, plus those skipped (some cached)
    unprobed = make_sampler({"type": "mutation", "probe": False}).sample(request(DELETION, parents))
    assert len(unprobed.bodies) == 4 and unprobed.sandbox_runs == 0


def test_first_candidate_reverses_the_better_parent() -> None:
    parents = ("    return 0.0\n", "    x = sum(el) % (n + 1)\n    return x * 2\n")
    result = MutationSampler().sample(request(DELETION, parents, samples=4, seed=3))
    assert result.bodies[0] == "    x = sum(el) % (n + 1)\n    return -(x * 2)\n"
    negated = ("    return 0.0\n", "    return -(sum(el) % (n + 1))\n")
    assert MutationSampler().sample(request(DELETION, negated)).bodies[0] == "    return sum(el) % (n + 1)\n"
    plain = make_sampler({"type": "mutation", "reverse": False}).sample(request(DELETION, parents, seed=3))
    assert plain.bodies[0] != result.bodies[0]


def test_an_island_is_not_given_an_order_twice(probes: Prober) -> None:
    """With a scope (an island of an experiment), what the sampler gave there before is skipped like
    a parent; another scope, or none, remembers nothing."""
    sampler = MutationSampler()
    parents = ("    return 0.0\n", "    return -(sum(el) % (n + 1)) + s * 0.5\n")
    given: list[tuple[float, ...] | None] = []
    for seed in range(8):
        req = SampleRequest(prompt="", parents=tuple(function_source(DELETION, b) for b in parents),
                            function_name="priority", header=DELETION, samples=4, seed=seed, scope="exp/3/0")
        given += [probes.fingerprint(body) for body in sampler.sample(req).bodies]
    found = [f for f in given if f is not None]
    assert len(found) == len(set(found)) == 32
    # No scope: the same request gives the same answer, whatever came before.
    assert sampler.sample(request(DELETION, parents, seed=0)).bodies == \
        MutationSampler().sample(request(DELETION, parents, seed=0)).bodies


def test_an_order_given_to_another_island_comes_back_as_the_same_text(probes: Prober) -> None:
    """Across islands of one experiment an order is given as one text (the engine evaluates a text
    once per experiment); another experiment gets its own."""
    sampler = MutationSampler()
    parents = tuple(function_source(DELETION, b) for b in ("    return 0.0\n", "    return sum(el) % (n + 1)\n"))

    def given(scope: str, seed: int) -> list[str]:
        req = SampleRequest(prompt="", parents=parents, function_name="priority", header=DELETION, samples=4,
                            seed=seed, scope=scope)
        return sampler.sample(req).bodies

    texts: dict[tuple[float, ...], str] = {}
    for seed in range(10):
        for body in given("exp/0/0", seed):
            found = probes.fingerprint(body)
            assert found is not None
            texts[found] = body
    shared = 0
    for seed in range(100, 110):
        for body in given("exp/1/0", seed):
            found = probes.fingerprint(body)
            assert found is not None
            if found in texts:
                assert texts[found] == body
                shared += 1
    assert shared > 0
    other = [body for seed in range(100, 110) for body in given("other/1/0", seed)]
    assert other != [body for seed in range(100, 110) for body in given("exp/2/0", seed)]


def test_candidates_order_most_probe_groups_unlike_any_known_program(probes: Prober) -> None:
    """A candidate ordering most probe groups as a parent or an earlier candidate does (per group)
    is given only when too few others are found; ``novelty: 0`` turns the rule off."""

    def new_groups(sampler: MutationSampler, scope: str) -> list[int]:
        parents = ("    return 0.0\n", "    return sum(el) - 2 * el[0] + s * 0.125\n")  # probed by no other test
        known = [probes.fingerprint(body) for body in parents]
        counts = []
        for seed in range(6):
            req = SampleRequest(prompt="", parents=tuple(function_source(DELETION, b) for b in parents),
                                function_name="priority", header=DELETION, samples=4, seed=seed, scope=scope)
            for body in sampler.sample(req).bodies[1:]:  # the first reverses the better parent
                found = probes.fingerprint(body)
                assert found is not None
                counts.append(sum(all(g is None or g[i] != value for g in known) for i, value in enumerate(found)))
                known.append(found)
        return counts

    assert min(new_groups(MutationSampler(restart=False), "exp/0/0")) >= 3  # of 4 groups
    assert min(new_groups(MutationSampler(novelty=0.0, restart=False), "exp/0/0")) < 3
    with pytest.raises(ValueError):
        MutationSampler(novelty=1.5)


def test_an_island_asked_for_the_same_better_parent_restarts_more_often() -> None:
    """Requests for one scope in a row whose better parent is not new count as stuck (more
    candidates made by a new top-level expression); a new better parent, or another scope, starts
    the count again."""
    sampler = MutationSampler()

    def stale(scope: str, *bodies: str) -> int:
        parents = tuple(function_source(DELETION, b) for b in bodies)
        return sampler._stale(SampleRequest(prompt="", parents=parents, function_name="priority", header=DELETION,
                                            scope=scope))

    assert [stale("exp/0/0", "    return 0.0\n", "    return sum(el)\n") for _ in range(3)] == [0, 1, 2]
    assert stale("exp/1/0", "    return 0.0\n", "    return sum(el)\n") == 0
    assert stale("exp/0/0", "    return sum(el)\n", "    return -sum(el)\n") == 0
    assert stale("exp/0/0", "    return 0.0\n", "    return sum(el)\n") == 1  # seen before: not new
    assert stale("", "    return 0.0\n", "    return sum(el)\n") == 0  # no scope, no memory
    parents = ("    return 0.0\n", "    return sum(el) % (n + 3)\n")
    stuck, plain = MutationSampler(), MutationSampler(restart=False)
    answers = []
    for sampler_ in (stuck, plain):
        for seed in range(12):
            req = SampleRequest(prompt="", parents=tuple(function_source(DELETION, b) for b in parents),
                                function_name="priority", header=DELETION, samples=4, seed=seed, scope="exp/2/0")
            last = sampler_.sample(req).bodies
        answers.append(last)
    assert answers[0] != answers[1]
