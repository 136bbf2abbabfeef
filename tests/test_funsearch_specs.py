"""FunSearch specs: loading, the bundled deletion-codes and cap-set specs, their checkers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from eqflow.funsearch.spec import Spec, SpecError, test_key

VT = "    return 1.0 if sum((i + 1) * x for i, x in enumerate(el)) % (n + 1) == 0 else 0.0\n"


def run_body(spec: Spec, body: str, test: dict) -> list:
    """Run the spec's greedy with ``body`` as the evolved function, in this process (trusted bodies only)."""
    module = spec.module()
    namespace = dict(vars(module))
    exec(f"{spec.header}\n{body}", namespace)
    original = getattr(module, spec.function_name)
    setattr(module, spec.function_name, namespace[spec.function_name])
    try:
        return getattr(module, spec.run_name)(**test)
    finally:
        setattr(module, spec.function_name, original)


@pytest.fixture(scope="module")
def deletion() -> Spec:
    return Spec.load("deletion_codes")


@pytest.fixture(scope="module")
def cap() -> Spec:
    return Spec.load("cap_set")


def test_deletion_spec_parts(deletion: Spec) -> None:
    assert deletion.name == "deletion_codes"
    assert deletion.function_name == "priority"
    assert deletion.header == "def priority(el: tuple[int, ...], n: int, s: int) -> float:"
    assert deletion.initial_body == "    return 0.0"
    assert deletion.run_name == "evaluate"
    assert "deletion" in deletion.docstring
    assert "import itertools" in deletion.imports and "funsearch" not in deletion.imports
    assert "el:" in deletion.function_docstring
    assert len(deletion.sha256) == 64
    program = deletion.program("    return float(sum(el))")
    assert "    return float(sum(el))\n" in program and "    return 0.0\n" not in program.split("def priority")[1]
    assert Spec.from_text(program, "again").initial_body == "    return float(sum(el))"
    assert deletion.default_tests[0] == {"n": 6, "s": 1}


LEXICOGRAPHIC = {1: [8, 14, 25, 42, 71, 125, 224], 2: [4, 5, 6, 9, 13, 20, 29]}
VT_SIZES = [10, 16, 30, 52, 94, 172, 316]


@pytest.mark.parametrize("s", [1, 2])
def test_lexicographic_greedy_sizes(deletion: Spec, s: int) -> None:
    sizes = []
    for n in range(6, 13):
        code = deletion.module().evaluate(n=n, s=s)
        sizes.append(deletion.check({"n": n, "s": s}, [list(word) for word in code]))
    assert sizes == LEXICOGRAPHIC[s]


def test_vt_priority_gives_vt_sizes(deletion: Spec) -> None:
    sizes = [deletion.check({"n": n, "s": 1}, run_body(deletion, VT, {"n": n, "s": 1})) for n in range(6, 13)]
    assert sizes == VT_SIZES


def test_known_and_targets(deletion: Spec) -> None:
    assert [deletion.known[test_key({"n": n, "s": 1})] for n in range(6, 13)] == VT_SIZES
    assert [deletion.known[test_key({"s": 2, "n": n})] for n in range(7, 13)] == [5, 7, 11, 16, 24, 37]
    vt = dict(zip(range(6, 13), VT_SIZES, strict=True))
    assert deletion.targets == {test_key({"n": n, "s": 1}): size for n, size in vt.items()}


def test_checker_rejects_non_codes(deletion: Spec) -> None:
    good = [list(word) for word in deletion.module().evaluate(n=6, s=1)]
    assert deletion.check({"n": 6, "s": 1}, good) == 8
    bad_cases = {
        "shared subsequence": [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]],  # delete the last bit: equal
        "wrong length": [*good[:-1], [0, 1]],
        "duplicate": [*good, good[0]],
        "not binary": [[0, 0, 0, 0, 0, 2]],
        "not a list": "000000",
        "word not a sequence": [7],
    }
    for label, solution in bad_cases.items():
        with pytest.raises(ValueError):
            deletion.check({"n": 6, "s": 1}, solution)
            pytest.fail(f"accepted: {label}")
    # A single-deletion code is not always a two-deletion code: the checker must look at s.
    with pytest.raises(ValueError, match="share"):
        deletion.check({"n": 6, "s": 2}, good)


def test_deletion_reduce(deletion: Spec) -> None:
    scores = {test_key({"n": 6, "s": 1}): 10.0, test_key({"n": 8, "s": 1}): 30.0, test_key({"n": 8, "s": 2}): 6.0}
    assert deletion.reduce(scores) == pytest.approx((30 + 6) / 2)
    assert deletion.reduce(scores, "average") == pytest.approx(46 / 3)
    assert deletion.reduce(scores, "weighted") == pytest.approx((60 + 240 + 48) / 22)
    with pytest.raises(ValueError, match="unknown reduction"):
        deletion.reduce(scores, "median")


def test_deletion_evaluation_is_fast(deletion: Spec) -> None:
    import time

    deletion.module().prepare(n=12, s=2)
    started = time.perf_counter()
    deletion.module().evaluate(n=12, s=2)
    assert time.perf_counter() - started < 1.0


def test_cap_set_sizes_and_checker(cap: Spec) -> None:
    assert cap.header == "def priority(el: tuple[int, ...], n: int) -> float:"
    # priority = 0: the lexicographic greedy keeps {0, 1}^n.
    sizes = [cap.check({"n": n}, cap.module().evaluate(n=n)) for n in range(1, 7)]
    assert sizes == [2, 4, 8, 16, 32, 64]
    assert [cap.known[test_key({"n": n})] for n in range(1, 7)] == [2, 4, 9, 20, 45, 112]
    assert cap.default_tests == [{"n": 3}, {"n": 4}]
    # The elliptic quadric z = x^2 + y^2 is a maximum (9-point) cap in F_3^3.
    nine = [(x, y, (x * x + y * y) % 3) for x in range(3) for y in range(3)]
    assert cap.check({"n": 3}, [list(v) for v in nine]) == 9
    with pytest.raises(ValueError, match="line"):
        cap.check({"n": 2}, [[0, 0], [1, 1], [2, 2]])
    with pytest.raises(ValueError):
        cap.check({"n": 2}, [[0, 0], [0, 0]])
    with pytest.raises(ValueError):
        cap.check({"n": 2}, [[0, 3]])
    assert cap.reduce({test_key({"n": 3}): 8.0, test_key({"n": 4}): 16.0}) == 12.0  # no reduce(): the mean


def write_spec(tmp_path: Path, text: str, name: str = "custom") -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return str(path)


CUSTOM = '''
    """Pick many numbers below n with no two adjacent."""
    import funsearch

    DEFAULT_TESTS = [{"n": 10}]
    KNOWN = {'{"n": 10}': 5}

    @funsearch.run
    def evaluate(n: int) -> list:
        chosen = []
        for x in sorted(range(n), key=lambda x: (-pick(x, n), x)):
            if all(abs(x - y) > 1 for y in chosen):
                chosen.append(x)
        return chosen

    @funsearch.evolve
    def pick(
        x: int,
        n: int,
    ) -> float:
        # no docstring: the body starts here
        return 0.0

    def score(solution, n):
        if len(set(solution)) != len(solution) or any(abs(a - b) <= 1 for a in solution for b in solution if a != b):
            raise ValueError("adjacent numbers")
        return float(len(solution))
'''


def test_custom_spec_from_file(tmp_path: Path) -> None:
    spec = Spec.load(write_spec(tmp_path, CUSTOM))
    assert spec.name == "custom"
    assert spec.function_name == "pick" and spec.run_name == "evaluate"
    assert spec.header == "def pick(\n    x: int,\n    n: int,\n) -> float:"
    assert spec.function_docstring == ""
    assert spec.initial_body == "    # no docstring: the body starts here\n    return 0.0"
    assert spec.known == {'{"n":10}': 5.0}
    assert spec.check({"n": 10}, spec.module().evaluate(n=10)) == 5.0
    assert spec.check({"n": 10}, run_body(spec, "    return -x", {"n": 10})) == 5.0
    with pytest.raises(ValueError, match="adjacent"):
        spec.check({"n": 10}, [1, 2])


@pytest.mark.parametrize(("text", "message"), [
    ("import funsearch\n@funsearch.run\ndef evaluate(n):\n    return n\n", "no function marked @funsearch.evolve"),
    ("import funsearch\n@funsearch.evolve\ndef p(n):\n    return 0\n", "no function marked @funsearch.run"),
    ("import funsearch\n@funsearch.run\ndef e(n):\n    return 0\n@funsearch.evolve\ndef p(n):\n    return 0\n"
     "@funsearch.evolve\ndef q(n):\n    return 0\n", "2 functions marked @funsearch.evolve: p (line 6), q (line 9)"),
    ("import funsearch\n@funsearch.run\ndef e(n):\n    return 0\n\ndef p(n:\n    return 0\n", "syntax error at line 6"),
    ("import funsearch\n@funsearch.run\ndef e(n):\n    return 0\n@funsearch.evolve\ndef p(n): return 0\n",
     "on its own lines"),
    ("import funsearch\n@funsearch.run\ndef e(n):\n    return 0\n@funsearch.evolve\ndef p(n):\n    '''doc'''\n",
     "only a docstring"),
])
def test_spec_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Spec.from_text(text, "broken")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not a bundled spec"):
        Spec.load("no_such_spec")
    spec = Spec.load(write_spec(tmp_path, "import funsearch\nimport no_such_module_here\n@funsearch.run\n"
                                          "def e(n):\n    return 0\n@funsearch.evolve\ndef p(n):\n    return 0\n"))
    with pytest.raises(SpecError, match="failed to import: ModuleNotFoundError"):
        spec.module()


def test_two_space_spec_keeps_its_indentation() -> None:
    text = ('"""Two-space indentation, as in DeepMind\'s specs."""\nimport funsearch\n\n@funsearch.run\n'
            'def evaluate(n):\n  return priority(n)\n\n@funsearch.evolve\ndef priority(n):\n  """Doc."""\n'
            '  if n:\n    return 1.0\n  return 0.0\n\n\ndef score(solution, n):\n  return float(solution)\n')
    spec = Spec.from_text(text, "two_space")
    assert spec.initial_body == "    if n:\n      return 1.0\n    return 0.0"  # first level 4, nesting as written
    body = "    x = n * 2\n    if x:\n        return 3.0\n    return 0.0"
    program = spec.program(body)
    assert '  """Doc."""\n  x = n * 2\n  if x:\n' in program  # the body's first level matches the docstring
    assert Spec.from_text(program, "again").initial_body == body
    namespace: dict = {}
    exec(program.replace("import funsearch", "funsearch = type('m', (), {'run': staticmethod(lambda f: f), "
                                             "'evolve': staticmethod(lambda f: f)})"), namespace)
    assert namespace["evaluate"](1) == 3.0
