"""Find large cap sets in n dimensions.

A cap set is a set of vectors in F_3^n (each entry 0, 1 or 2) with no three distinct vectors on a
line; three distinct vectors x, y, z are on a line exactly when x + y + z = 0 (mod 3) in every
coordinate. A larger cap set is better.

The cap set is built greedily: all 3**n vectors are sorted by priority (highest first; ties in
lexicographic order) and each vector is kept when it completes no line with two vectors kept
before it. The priority function decides the order, and so the cap set.
"""

import itertools
import json

import funsearch

# Largest cap sets known, n = 1..6 (optimal for n <= 6).
_LARGEST = {1: 2, 2: 4, 3: 9, 4: 20, 5: 45, 6: 112}


def _key(n: int) -> str:
    return json.dumps({"n": n}, sort_keys=True, separators=(",", ":"))


DEFAULT_TESTS = [{"n": 3}, {"n": 4}]
KNOWN = {_key(n): size for n, size in _LARGEST.items()}
TARGETS = {_key(n): size for n, size in _LARGEST.items() if n in (3, 4)}

_VECTORS: dict = {}


def _vectors(n: int) -> list:
    """All vectors of F_3^n in lexicographic order; a vector's index is its base-3 number."""
    if n not in _VECTORS:
        _VECTORS[n] = list(itertools.product((0, 1, 2), repeat=n))
    return _VECTORS[n]


def prepare(n: int) -> None:
    """Build the vector list for n once, before any candidate runs."""
    _vectors(n)


@funsearch.run
def evaluate(n: int) -> list:
    """Returns the cap set built greedily in priority order (a list of vectors as tuples)."""
    return solve(n)


def solve(n: int) -> list:
    """Greedy: vectors in order of (-priority, lexicographic); keep a vector unless it is blocked,
    i.e. it is the third point of a line through two kept vectors."""
    vectors = _vectors(n)
    priorities = []
    for vector in vectors:
        value = float(priority(vector, n))
        if value != value:
            raise ValueError(f"priority returned NaN for {vector}")
        priorities.append(-value)
    order = sorted(range(len(vectors)), key=priorities.__getitem__)  # stable: ties stay lexicographic
    powers = [3 ** (n - 1 - i) for i in range(n)]
    blocked = bytearray(len(vectors))
    kept: list = []
    for index in order:
        if blocked[index]:
            continue
        vector = vectors[index]
        for other in kept:
            # The third point z of the line through x and y solves x + y + z = 0 (mod 3).
            blocked[sum(((-a - b) % 3) * p for a, b, p in zip(vector, other, powers, strict=True))] = 1
        kept.append(vector)
        blocked[index] = 1
    return kept


@funsearch.evolve
def priority(el: tuple[int, ...], n: int) -> float:
    """Returns the priority with which we want to add `el` to the cap set.

    Args:
        el: a vector of F_3^n, a tuple of n entries in {0, 1, 2}.
        n: the dimension.
    """
    return 0.0


def score(solution: list, n: int) -> float:
    """The size of the cap set, after checking it independently of the greedy: every vector of
    length n over {0, 1, 2}, distinct, and no two vectors whose line's third point is in the set."""
    if not isinstance(solution, list):
        raise ValueError("the solution must be a list of vectors")
    if len(solution) > 3**n:
        raise ValueError(f"{len(solution)} vectors, more than the {3**n} vectors of F_3^{n}")
    members = set()
    for index, vector in enumerate(solution):
        if not isinstance(vector, (list, tuple)) or len(vector) != n:
            raise ValueError(f"vector {index} is not a sequence of length {n}: {vector!r}")
        if any(type(entry) is not int or entry not in (0, 1, 2) for entry in vector):
            raise ValueError(f"vector {index} has an entry outside {{0, 1, 2}}: {vector!r}")
        vector = tuple(vector)
        if vector in members:
            raise ValueError(f"vector {index} appears twice: {vector}")
        members.add(vector)
    for x, y in itertools.combinations(sorted(members), 2):
        z = tuple((-a - b) % 3 for a, b in zip(x, y, strict=True))
        if z in members:
            raise ValueError(f"{x}, {y} and {z} are on a line")
    return float(len(solution))
