"""Find large binary codes that correct s deletions.

A code is a set of binary words of length n. It corrects s deletions when no two codewords share a
subsequence of length n - s: after any s bits of a codeword are deleted, the remaining word
identifies the codeword. The set of all length-(n - s) subsequences of a word is its s-deletion
ball, so a code is a set of words with pairwise disjoint balls, and a larger code is better.

The code is built greedily: all 2**n words are sorted by priority (highest first; ties in
lexicographic order) and each word is kept when its deletion ball is disjoint from the balls of
the words kept before it. The priority function decides the order, and so the code.
"""

import itertools
import json

import funsearch

# Varshamov-Tenengolts codes VT_0(n) (single-deletion correcting), n = 6..12.
_VT_SIZES = {6: 10, 7: 16, 8: 30, 9: 52, 10: 94, 11: 172, 12: 316}
# Largest known two-deletion-correcting codes, n = 7..12.
_BEST_TWO_DELETIONS = {7: 5, 8: 7, 9: 11, 10: 16, 11: 24, 12: 37}


def _key(n: int, s: int) -> str:
    return json.dumps({"n": n, "s": s}, sort_keys=True, separators=(",", ":"))


DEFAULT_TESTS = [{"n": n, "s": 1} for n in range(6, 12)]
KNOWN = {**{_key(n, 1): size for n, size in _VT_SIZES.items()},
         **{_key(n, 2): size for n, size in _BEST_TWO_DELETIONS.items()}}
TARGETS = {_key(n, 1): size for n, size in _VT_SIZES.items()}

# (n, s) -> (words in lexicographic order, each word's deletion ball as subsequence ids).
_CONFLICTS: dict = {}


def _delete_bit(word: int, length: int, position: int) -> int:
    """The word (`length` bits, position 0 = most significant) with one bit removed."""
    shift = length - 1 - position
    high = word >> (shift + 1)
    low = word & ((1 << shift) - 1)
    return (high << shift) | low


def _conflicts(n: int, s: int) -> tuple:
    """Every word of length n with its s-deletion ball; the balls are sets of (n - s)-bit integers,
    built one deletion at a time with memoised smaller balls."""
    if (n, s) not in _CONFLICTS:
        balls: dict = {}

        def ball(word: int, length: int, deletions: int) -> frozenset:
            if deletions == 0:
                return frozenset((word,))
            memo = (word, length, deletions)
            if memo not in balls:
                shorter = {_delete_bit(word, length, position) for position in range(length)}
                balls[memo] = frozenset().union(*(ball(w, length - 1, deletions - 1) for w in shorter))
            return balls[memo]

        words = list(itertools.product((0, 1), repeat=n))
        word_balls = [tuple(ball(index, n, s)) for index in range(len(words))]
        _CONFLICTS[(n, s)] = (words, word_balls)
    return _CONFLICTS[(n, s)]


def prepare(n: int, s: int) -> None:
    """Build the deletion balls for (n, s) once, before any candidate runs."""
    _conflicts(n, s)


@funsearch.run
def evaluate(n: int, s: int) -> list:
    """Returns the code built greedily in priority order (a list of words as tuples of bits)."""
    return solve(n, s)


def solve(n: int, s: int) -> list:
    """Greedy: words in order of (-priority, lexicographic); keep a word if its ball is free."""
    words, word_balls = _conflicts(n, s)
    priorities = []
    for word in words:
        value = float(priority(word, n, s))
        if value != value:
            raise ValueError(f"priority returned NaN for {word}")
        priorities.append(-value)
    order = sorted(range(len(words)), key=priorities.__getitem__)  # stable: ties stay lexicographic
    taken = bytearray(1 << (n - s))
    code = []
    for index in order:
        word_ball = word_balls[index]
        if not any(taken[element] for element in word_ball):
            for element in word_ball:
                taken[element] = 1
            code.append(words[index])
    return code


@funsearch.evolve
def priority(el: tuple[int, ...], n: int, s: int) -> float:
    """Returns the priority with which we want to add `el` to the code.

    Args:
        el: a binary word of length n, a tuple of 0s and 1s.
        n: the length of the codewords.
        s: the number of deletions the code must correct.
    """
    return 0.0


def score(solution: list, n: int, s: int) -> float:
    """The size of the code, after checking it independently of the greedy: every word binary, of
    length n, distinct, and no subsequence of length n - s shared by two words."""
    if not isinstance(solution, list):
        raise ValueError("the solution must be a list of words")
    if len(solution) > 2**n:
        raise ValueError(f"{len(solution)} words, more than the {2**n} binary words of length {n}")
    owner: dict = {}
    seen = set()
    for index, word in enumerate(solution):
        if not isinstance(word, (list, tuple)) or len(word) != n:
            raise ValueError(f"word {index} is not a sequence of length {n}: {word!r}")
        if any(type(bit) is not int or bit not in (0, 1) for bit in word):
            raise ValueError(f"word {index} is not binary: {word!r}")
        word = tuple(word)
        if word in seen:
            raise ValueError(f"word {index} appears twice: {word}")
        seen.add(word)
        subsequences = {tuple(bit for position, bit in enumerate(word) if position not in deleted)
                        for deleted in map(set, itertools.combinations(range(n), s))}
        for subsequence in subsequences:
            other = owner.setdefault(subsequence, index)
            if other != index:
                raise ValueError(f"words {other} and {index} share the subsequence {subsequence} "
                                 f"after {s} deletion(s)")
    return float(len(solution))


def reduce(scores: dict, how: str = "last") -> float:
    """One program score from per-(n, s) code sizes.

    last: the size at the largest n for each s, averaged over s (the default).
    average: the mean size over all tests.
    weighted: sizes weighted by n (sum of n * size / sum of n), so longer codes count more.
    """
    tests = [(json.loads(key), value) for key, value in scores.items()]
    if how == "last":
        largest: dict = {}
        for test, value in tests:
            s = test["s"]
            if s not in largest or test["n"] > largest[s][0]:
                largest[s] = (test["n"], value)
        return sum(value for _, value in largest.values()) / len(largest)
    if how == "average":
        return sum(value for _, value in tests) / len(tests)
    if how == "weighted":
        return sum(test["n"] * value for test, value in tests) / sum(test["n"] for test, _ in tests)
    raise ValueError(f"unknown reduction {how!r}: use last, average or weighted")
