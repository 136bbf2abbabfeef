"""The ``mutation`` sampler: candidates made by structural edits of the parents' syntax trees.

It needs no model, so it is the CPU baseline and the tests' workhorse. It knows Python and the
evolved function's signature (argument names and annotations, read from the header), never the
problem: the terms it inserts are generic over the argument types (an int ``n``: ``n``, ``n + 1``;
a sequence ``el``: ``sum(el)``, ``len(el)``, index-weighted sums, alternating sums, changes between
neighbours, prefix sums...; a float: arithmetic with constants; a numpy array: elementwise terms).

Edits: perturb a numeric constant, swap an operator (arithmetic, comparison, boolean), replace a
subexpression by a term or insert a term next to it, wrap a subexpression (negation, ``% k``,
``abs``, ``min``/``max``, a comparison), crossover (a subexpression of the other parent replaces one
of this parent's), simplify (a subexpression replaced by one of its operands, a statement dropped).

Config (``make_sampler({"type": "mutation", ...})``): ``max_nodes`` (syntax-tree size bound of a
candidate, default 80), ``max_depth`` (default 12), ``crossover_rate`` (share of candidates made by
crossover when there are two parents, default 0.15), ``max_edits`` (edits per candidate, at most;
default 3), ``term_wrap_rate`` (how often a new term comes already wrapped, default 0.5),
``weights`` (relative weights of the edits, overriding ``DEFAULT_WEIGHTS``), ``attempts`` (tries per
candidate asked for before giving up on distinct ones, default 40), ``prior`` (``uniform``, the
default: every term of a kind equally likely; ``tuned``: the hand-set term weights below, which
favour index-weighted sums and ``n + 1`` -- knowledge of deletion codes, kept for comparison);
``probe``, ``reverse``, ``remember``, ``restart`` (each default true) and ``novelty`` (default 0.75;
see below).

Candidates that read none of the function's arguments (or, when it has others, only its int
arguments: sizes such as ``n``, fixed across one evaluation) are not returned: they are constants.

Probing (``probe``, default true; ``mutation_probe.py``): each candidate with new text, and each
parent, also runs in a sandbox of the sampler's own (bubblewrap-isolated forked children, as the
evaluator's; never in the sampler's process) on inputs made up from the signature alone. Its
fingerprint is the order it gives those inputs. A candidate ordering them like a parent or an
earlier candidate (``2 * sum(el) + 1`` beside ``sum(el)``), or not at all (``len(el) + n``), is
given only when too few others are found. No problem is scored there: a probe is not an
evaluation; ``SampleResult.sandbox_runs`` counts them.

Novelty (``novelty``, default 0.75): the probe inputs come in groups, and a candidate is given
first only when, in at least this share of the groups, it orders them unlike the parents and
every candidate given before (per group, not only as a whole); the others are given, the most
novel first, only when too few are found. One ordering most groups like a known program differs
from it only on some inputs, which a problem may never use (0 turns this off).

Restarts (``restart``, default true): with a scope, an island asked for again and again with the
same better parent is stuck; each such request in a row makes a new top-level expression (the
``fresh`` edit) more likely, up to 4 times its weight; a new better parent starts the count again.

Reversal (``reverse``, default true): the first candidate of every answer is the better parent with
its order reversed (every returned value negated), when that orders the probe inputs unlike both
parents: the direction of an order is the first thing to try about any priority function. The
engine evaluates a body once, so asking again for the same parent costs nothing.

Memory (``remember``, default true): with ``SampleRequest.scope`` set (the engine sets it to the
experiment, island and island version), what the sampler gave there before is skipped like a
parent, so an island is not given an order twice (the engine would evaluate it and drop it as a
duplicate behaviour); and a candidate ordering the probe inputs like one given to another island
of the experiment is replaced by that one's text, which the engine evaluates once per experiment
(the island gets it at no cost). Without a scope a request always gives the same answer.
The edit mix was tuned offline on a deletion-codes greedy (a scratch script, not shipped); nothing
in here names that problem or its answers, and the default prior gives every term the same weight.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from eqflow.funsearch.code import INDENT, parse_function
from eqflow.funsearch.mutation_probe import Prober, not_worth_evaluating, prober
from eqflow.funsearch.samplers import SampleRequest, SampleResult, register

# What a subexpression evaluates to, as far as the sampler can tell from the syntax.
SCALAR, SEQ, ARRAY, OTHER = "scalar", "seq", "array", "other"

_ARITH: tuple[type[ast.operator], ...] = (ast.Add, ast.Sub, ast.Mult, ast.Mod, ast.FloorDiv, ast.Div)
_COMPARE: tuple[type[ast.cmpop], ...] = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
_SCALAR_CALLS = {"sum", "len", "max", "min", "int", "float", "round", "bool", "abs"}
_SEQ_CALLS = {"enumerate", "zip", "range", "sorted", "list", "tuple", "reversed", "set", "map", "filter"}
_NP_REDUCTIONS = {"sum", "max", "min", "mean", "std", "argmax", "argmin", "count_nonzero", "prod", "median"}
_LIMIT = 1e6  # constants stay in [-1e6, 1e6]

# Generic sequence features of a sequence argument {s}; {i} {x} {a} {b} are fresh loop names and
# {c} a small constant. None is specific to a problem: each is a standard reduction of a sequence.
SEQ_FEATURES: tuple[tuple[str, float], ...] = (
    ("sum({s})", 1.0),
    ("len({s})", 0.4),
    ("max({s})", 0.3),
    ("min({s})", 0.3),
    ("{s}[0]", 0.4),
    ("{s}[-1]", 0.4),
    ("{s}[len({s}) // 2]", 0.3),
    ("sum({i} * {x} for {i}, {x} in enumerate({s}, 0))", 1.0),  # an explicit start: a constant to perturb
    ("sum({i} * {x} for {i}, {x} in enumerate({s}, 1))", 2.0),
    ("sum({x} * (-1) ** {i} for {i}, {x} in enumerate({s}))", 0.5),
    ("sum({a} != {b} for {a}, {b} in zip({s}, {s}[1:]))", 0.4),
    ("sum(sum({s}[:{i} + 1]) for {i} in range(len({s})))", 1.0),
    ("sum({x} == {c} for {x} in {s})", 0.3),
    ("sum({x} * {x} for {x} in {s})", 0.2),
    ("sum({i} * {i} * {x} for {i}, {x} in enumerate({s}, 1))", 0.2),
    ("sum(2 ** {i} * {x} for {i}, {x} in enumerate({s}))", 0.2),
)
INT_TERMS: tuple[tuple[str, float], ...] = (
    ("{n}", 1.0), ("{n} + 1", 2.0), ("{n} - 1", 0.3), ("2 * {n}", 0.3), ("2 * {n} + 1", 0.2), ("{n} + {c}", 0.2),
)
FLOAT_TERMS: tuple[tuple[str, float], ...] = (
    ("{f}", 1.0), ("{f} * {c}", 0.5), ("{f} + {c}", 0.5), ("{f} * {f}", 0.3), ("1 / ({f} + 1)", 0.2),
)
ARRAY_TERMS: tuple[tuple[str, float], ...] = (
    ("{v}", 1.0), ("{v} - {f}", 1.0), ("{f} / {v}", 0.6), ("({v} - {f}) ** 2", 0.4), ("{v} * {c}", 0.4),
    ("np.max({v})", 0.3), ("np.min({v})", 0.3), ("np.mean({v})", 0.3), ("len({v})", 0.2), ("np.sqrt(np.abs({v}))", 0.2),
)


@dataclass(frozen=True)
class Signature:
    """The evolved function's arguments by kind: ints, floats, sequences, numpy arrays."""

    ints: tuple[str, ...] = ()
    floats: tuple[str, ...] = ()
    seqs: tuple[str, ...] = ()
    arrays: tuple[str, ...] = ()
    others: tuple[str, ...] = ()  # arguments of a type the sampler does not know
    numpy: bool = False  # the header names np.*, so ``np`` is in the candidate's scope
    returns: str = SCALAR

    @property
    def names(self) -> set[str]:
        return set(self.ints) | set(self.floats) | set(self.seqs) | set(self.arrays)

    def kind_of(self, name: str) -> str:
        if name in self.ints or name in self.floats:
            return SCALAR
        if name in self.seqs:
            return SEQ
        return ARRAY if name in self.arrays else OTHER


def _annotation_kind(annotation: ast.expr | None) -> str:
    text = ast.unparse(annotation).replace(" ", "") if annotation is not None else ""
    head = text.split("[", 1)[0].rsplit(".", 1)[-1]
    if head == "ndarray" or "ndarray" in text and head not in {"list", "tuple", "Sequence"}:
        return "array"
    if head in {"tuple", "list", "Tuple", "List", "Sequence", "Iterable", "MutableSequence", "bytes"}:
        return "seq"
    if head in {"int", "bool"}:
        return "int"
    if head in {"float", "complex"}:
        return "float"
    return "other"


def parse_signature(header: str) -> Signature:
    """The argument kinds of a ``def`` line (``def priority(el: tuple[int, ...], n: int) -> float:``)."""
    function = parse_function(header.rstrip() + "\n" + INDENT + "pass\n")
    if function is None:
        raise ValueError(f"not a def line: {header!r}")
    groups: dict[str, list[str]] = {"int": [], "float": [], "seq": [], "array": [], "other": []}
    arguments = function.args
    for arg in arguments.posonlyargs + arguments.args + arguments.kwonlyargs:
        groups[_annotation_kind(arg.annotation)].append(arg.arg)
    returns = _annotation_kind(function.returns)
    return Signature(ints=tuple(groups["int"]), floats=tuple(groups["float"]), seqs=tuple(groups["seq"]),
                     arrays=tuple(groups["array"]), others=tuple(groups["other"]), numpy="np." in header,
                     returns=ARRAY if returns == "array" else SCALAR)


@dataclass
class Slot:
    """A place in the tree holding a mutable expression: ``holder.field[index]`` (or no index)."""

    holder: ast.AST
    field: str
    index: int | None
    node: ast.expr
    scope: frozenset[str]  # scalar loop names visible here (comprehension targets)
    kind: str
    depth: int
    want_int: bool  # an index, a slice bound, a range/enumerate argument: keep it an int

    def put(self, new: ast.expr) -> None:
        if self.index is None:
            setattr(self.holder, self.field, new)
        else:
            getattr(self.holder, self.field)[self.index] = new


def _target_names(target: ast.expr) -> set[str]:
    return {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}


class _Kinds:
    """Kind inference for subexpressions, with the function's simple local assignments."""

    def __init__(self, signature: Signature, function: ast.FunctionDef) -> None:
        self.signature = signature
        self.locals: dict[str, str] = {}
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                self.locals.setdefault(node.targets[0].id, self.kind(node.value, frozenset()))
            elif isinstance(node, ast.For | ast.comprehension):
                for name in _target_names(node.target):
                    self.locals.setdefault(name, SCALAR)

    def kind(self, node: ast.expr, scope: frozenset[str]) -> str:  # noqa: C901 - one case per node type
        if isinstance(node, ast.Constant):
            return SCALAR if isinstance(node.value, int | float) else OTHER
        if isinstance(node, ast.Name):
            if node.id in scope:
                return SCALAR
            kind = self.signature.kind_of(node.id)
            return self.locals.get(node.id, OTHER) if kind == OTHER else kind
        if isinstance(node, ast.BinOp | ast.Compare | ast.BoolOp):
            parts = [node.left, node.right] if isinstance(node, ast.BinOp) else (
                [node.left, *node.comparators] if isinstance(node, ast.Compare) else node.values)
            kinds = {self.kind(part, scope) for part in parts}
            if ARRAY in kinds:
                return ARRAY
            return SEQ if SEQ in kinds and isinstance(node, ast.BinOp) else (OTHER if OTHER in kinds else SCALAR)
        if isinstance(node, ast.UnaryOp):
            return self.kind(node.operand, scope)
        if isinstance(node, ast.IfExp):
            return self.kind(node.body, scope)
        if isinstance(node, ast.Call):
            return self._call_kind(node, scope)
        if isinstance(node, ast.Subscript):
            base = self.kind(node.value, scope)
            if isinstance(node.slice, ast.Slice):
                return base
            return SCALAR if base in (SEQ, ARRAY) else OTHER
        if isinstance(node, ast.ListComp | ast.GeneratorExp | ast.List | ast.Tuple):
            return SEQ
        return OTHER

    def _call_kind(self, node: ast.Call, scope: frozenset[str]) -> str:
        func = node.func
        if isinstance(func, ast.Name):
            if func.id == "abs" and node.args:
                return self.kind(node.args[0], scope)
            if func.id in _SCALAR_CALLS:
                return SCALAR
            return SEQ if func.id in _SEQ_CALLS else OTHER
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "np":
            return SCALAR if func.attr in _NP_REDUCTIONS else ARRAY
        return OTHER


def _slots(function: ast.FunctionDef, kinds: _Kinds) -> list[Slot]:
    """Every expression of the body that holds a number or an array: what edits may touch."""
    found: list[Slot] = []

    def visit(holder: ast.AST, scope: frozenset[str], depth: int, int_context: bool) -> None:
        for name, value in ast.iter_fields(holder):
            if _skip_field(holder, name):
                continue
            items = value if isinstance(value, list) else [value]
            for index, child in enumerate(items):
                if not isinstance(child, ast.AST):
                    continue
                wants_int = int_context or _int_field(holder, name)
                if isinstance(child, ast.expr):
                    kind = kinds.kind(child, scope)
                    if kind in (SCALAR, ARRAY) and not isinstance(child, ast.Constant) or _is_number(child):
                        slot_index = index if isinstance(value, list) else None
                        found.append(Slot(holder, name, slot_index, child, scope, kind, depth, wants_int))
                inner = scope
                if isinstance(child, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
                    inner = scope | {n for g in child.generators for n in _target_names(g.target)}
                if isinstance(child, ast.Lambda):
                    continue  # its arguments are names the sampler does not track
                visit(child, inner, depth + 1, wants_int and isinstance(child, ast.BinOp | ast.UnaryOp))

    visit(function, frozenset(), 0, False)
    return found


def _skip_field(holder: ast.AST, name: str) -> bool:
    """Fields that are not values: the called function, the def's arguments and decorators, targets."""
    if isinstance(holder, ast.FunctionDef):
        return name in ("args", "returns", "decorator_list")
    if isinstance(holder, ast.Call):
        return name == "func"
    if isinstance(holder, ast.Attribute):
        return True
    return name in ("target", "targets") or isinstance(holder, ast.JoinedStr | ast.FormattedValue)


def _int_field(holder: ast.AST, name: str) -> bool:
    if isinstance(holder, ast.Subscript) and name == "slice" or isinstance(holder, ast.Slice):
        return True
    return (isinstance(holder, ast.Call) and isinstance(holder.func, ast.Name)
            and holder.func.id in ("range", "enumerate", "round") and name == "args")


def _is_number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool)


def _name(name: str) -> ast.Name:
    return ast.Name(name, ast.Load())


def _expr(text: str) -> ast.expr:
    return ast.parse(text, mode="eval").body


def _weighted(rng: random.Random, options: tuple[tuple[str, float], ...] | list[tuple[Any, float]]) -> Any:
    return rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]


@dataclass
class Mutator:
    """Edits one parent (with the other as crossover material) into candidates."""

    signature: Signature
    rng: random.Random
    max_nodes: int = 80
    max_depth: int = 12
    weights: dict[str, float] = field(default_factory=dict)
    term_wrap_rate: float = 0.5
    top_wrap_rate: float = 0.5
    prior: str = "uniform"

    # Terms -----------------------------------------------------------------------------------------------

    def _fresh(self, base: str, taken: set[str]) -> str:
        name = base
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    def _fill(self, template: str, **known: str) -> ast.expr:
        taken = self.signature.names | set(self.signature.others) | {"np"}
        loops = {k: self._fresh(k, taken) for k in ("i", "x", "a", "b")}
        return _expr(template.format(c=self.small_int(), **loops, **known))

    def _pick(self, table: tuple[tuple[str, float], ...], **known: str) -> ast.expr:
        if self.prior == "uniform":  # every term as likely as any other: nothing known of the problem
            table = tuple((template, 1.0) for template, _ in table)
        return self._fill(_weighted(self.rng, table), **known)

    def small_int(self) -> int:
        return self.rng.choice((0, 1, 1, 2, 2, 3, 4, 5, 7))

    def constant(self, want_int: bool) -> ast.expr:
        if want_int or self.rng.random() < 0.6:
            return ast.Constant(self.rng.choice((0, 1, 2, 3, 4, 5, 10, -1, -2)))
        return ast.Constant(self.rng.choice((0.0, 0.5, 1.0, 2.0, -1.0, 0.1, 1.5, 3.0)))

    def int_term(self) -> ast.expr:
        """An int-valued term: a constant, an int argument (plus one, doubled...), a length."""
        options: list[tuple[Callable[[], ast.expr], float]] = [(lambda: ast.Constant(self.rng.randint(2, 7)), 1.0)]
        for n in self.signature.ints:
            options.append((partial(self._pick, INT_TERMS, n=n), 2.0))
        for s in self.signature.seqs:
            options.append((partial(self._pick, (("len({s})", 1.0), ("len({s}) + 1", 1.0)), s=s), 0.7))
        return _weighted(self.rng, options)()

    def term(self, scope: frozenset[str], want_int: bool = False, depth: int = 0) -> ast.expr:
        """A random scalar (or, with array arguments, elementwise) term over the arguments in scope."""
        sig, rng = self.signature, self.rng
        if want_int:
            return self.int_term() if rng.random() < 0.7 or not scope else _name(rng.choice(sorted(scope)))
        options: list[tuple[Callable[[], ast.expr], float]] = [(lambda: self.constant(False), 0.5)]
        if sig.ints or sig.seqs:
            options.append((self.int_term, 1.0))
        for f in sig.floats:
            options.append((partial(self._pick, FLOAT_TERMS, f=f), 1.5))
        for s in sig.seqs:
            options.append((partial(self._pick, SEQ_FEATURES, s=s), 3.0))
        for v in sig.arrays if sig.numpy else ():
            options.append((partial(self._pick, ARRAY_TERMS, v=v, f=sig.floats[0] if sig.floats else "1.0"), 3.0))
        if scope:
            options.append((lambda: _name(rng.choice(sorted(scope))), 2.0))
        if depth < 1:
            options.append((lambda: ast.BinOp(self.term(scope, depth=depth + 1), rng.choice(_ARITH[:3])(),
                                              self.term(scope, depth=depth + 1)), 0.5))
        return _weighted(rng, options)()

    # Edits -----------------------------------------------------------------------------------------------

    def perturb(self, slot: Slot) -> ast.expr | None:
        node = slot.node
        if not _is_number(node):
            return None
        assert isinstance(node, ast.Constant)
        value, rng = node.value, self.rng
        assert isinstance(value, int | float)
        new: float
        if isinstance(value, int):
            new = rng.choice((value + 1, value - 1, value + 1, value - 1, value * 2, -value, rng.randint(-3, 10)))
        elif slot.want_int:
            new = round(value)
        else:
            new = rng.choice((round(value + rng.gauss(0, 1), 3), value * rng.choice((0.5, 2.0, -1.0)),
                              float(rng.randint(-3, 5)), round(value + rng.choice((-1, 1)) * 0.5, 3)))
        if not math.isfinite(new) or abs(new) > _LIMIT or new == value:
            return None
        return ast.Constant(new) if new >= 0 else ast.UnaryOp(ast.USub(), ast.Constant(-new))

    def swap(self, slot: Slot) -> ast.expr | None:
        node, rng = copy.deepcopy(slot.node), self.rng
        if isinstance(node, ast.BinOp):
            choices = [op for op in _ARITH if not isinstance(node.op, op)]
            if slot.want_int:
                choices = [op for op in choices if op is not ast.Div]
            node.op = rng.choice(choices)()
        elif isinstance(node, ast.Compare):
            i = rng.randrange(len(node.ops))
            node.ops[i] = rng.choice([op for op in _COMPARE if not isinstance(node.ops[i], op)])()
        elif isinstance(node, ast.BoolOp):
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
            node.op = ast.Not() if isinstance(node.op, ast.USub) and slot.kind == SCALAR else ast.USub()
        else:
            return None
        return node

    def rich_term(self, slot: Slot) -> ast.expr:
        """A term, sometimes already wrapped (``feature % k``, ``-feature``): one edit then reaches
        what would take two, each of which alone may score no better than the parent."""
        term = self.term(slot.scope, slot.want_int)
        rate = self.term_wrap_rate
        while self.rng.random() < rate:  # wrapped once at term_wrap_rate, twice at its square...
            term = self._wrapped(term, slot.kind, slot.want_int, slot.scope)
            rate *= self.term_wrap_rate
        return term

    def replace(self, slot: Slot) -> ast.expr | None:
        return self.rich_term(slot)

    def insert(self, slot: Slot) -> ast.expr | None:
        term = self.rich_term(slot)
        op = self.rng.choice((ast.Add, ast.Sub, ast.Mult, ast.Add))()
        node = copy.deepcopy(slot.node)
        return ast.BinOp(node, op, term) if self.rng.random() < 0.7 else ast.BinOp(term, op, node)

    def wrap(self, slot: Slot) -> ast.expr | None:
        return self._wrapped(copy.deepcopy(slot.node), slot.kind, slot.want_int, slot.scope)

    def _wrapped(self, node: ast.expr, kind: str, want_int: bool, scope: frozenset[str]) -> ast.expr:
        rng = self.rng
        options: list[tuple[Callable[[], ast.expr], float]] = [
            (lambda: ast.UnaryOp(ast.USub(), node), 1.0),
            (lambda: ast.BinOp(node, ast.Mod(), self.int_term()), 2.0),
            (lambda: ast.Call(_name("abs"), [node], []), 0.3),
        ]
        if not want_int:
            options.append((lambda: ast.Compare(node, [rng.choice(_COMPARE)()], [self._compare_to(scope)]), 1.0))
        if kind != ARRAY:
            options.append((lambda: ast.Call(_name(rng.choice(("min", "max"))), [node, self.term(scope)], []), 0.4))
        elif self.signature.numpy:
            function = ast.Attribute(_name("np"), rng.choice(("minimum", "maximum")), ast.Load())
            options.append((lambda: ast.Call(function, [node, self.term(scope)], []), 0.4))
        return _weighted(rng, options)()

    def _compare_to(self, scope: frozenset[str]) -> ast.expr:
        return ast.Constant(self.rng.choice((0, 0, 1))) if self.rng.random() < 0.75 else self.term(scope)

    def simplify(self, slot: Slot, kinds: _Kinds) -> ast.expr | None:
        """One of the operands of ``slot.node`` in its place (``-(a % b)`` -> ``a % b``)."""
        node = slot.node
        if not isinstance(node, ast.BinOp | ast.UnaryOp | ast.Compare | ast.BoolOp | ast.IfExp | ast.Call):
            return None
        visible = slot.scope | self.signature.names | {"np"}
        children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)
                    and (_is_number(c) or kinds.kind(c, slot.scope) in (SCALAR, ARRAY))
                    and _free_names(c) <= visible]
        return copy.deepcopy(self.rng.choice(children)) if children else None

    def crossover(self, slot: Slot, other: ast.FunctionDef) -> ast.expr | None:
        """A subexpression of the other parent, when its loop names are visible here."""
        allowed = slot.scope | self.signature.names | {"np"}
        donors = [s.node for s in _slots(other, _Kinds(self.signature, other))
                  if not isinstance(s.node, ast.Constant) and _free_names(s.node) <= allowed]
        return copy.deepcopy(self.rng.choice(donors)) if donors else None

    def drop_statement(self, function: ast.FunctionDef) -> bool:
        """Drops a statement before the last one (an assignment the rest may not need)."""
        if len(function.body) < 2:
            return False
        del function.body[self.rng.randrange(len(function.body) - 1)]
        return True

    # One edit and one candidate ---------------------------------------------------------------------------

    def edit(self, function: ast.FunctionDef, other: ast.FunctionDef | None, operation: str) -> bool:
        """Applies one edit of kind ``operation`` in place; False when it found nothing to do."""
        if operation == "drop":
            return self.drop_statement(function)
        kinds = _Kinds(self.signature, function)
        slots = _slots(function, kinds)
        if operation == "perturb":
            slots = [s for s in slots if _is_number(s.node)]
        elif operation == "fresh" and slots or operation == "wrap" and self.rng.random() < self.top_wrap_rate:
            # A whole top-level expression (a return value) made anew, a restart from this program;
            # or wrapped: the output transformed (negated, reduced modulo k, compared).
            top = min(s.depth for s in slots)
            slots = [s for s in slots if s.depth == top]
        if not slots:
            return False
        slot = self.rng.choices(slots, weights=[(1.0 + 0.5 * s.depth) ** -1.5 for s in slots])[0]
        new: ast.expr | None
        if operation == "crossover":
            new = self.crossover(slot, other) if other is not None else None
        elif operation == "simplify":
            new = self.simplify(slot, kinds)
        elif operation == "fresh":
            new = self.rich_term(slot)
        else:
            new = getattr(self, operation)(slot)
        if new is None:
            return False
        slot.put(new)
        return True

    def mutate(self, parent: ast.FunctionDef, other: ast.FunctionDef | None, crossover_rate: float,
               max_edits: int) -> ast.FunctionDef | None:
        function = copy.deepcopy(parent)
        edits = 1
        while edits < max_edits and self.rng.random() < 0.35:
            edits += 1
        operations = dict(self.weights)
        size = _size(function)
        # Big programs are simplified more often: sizes stay bounded without a hard wall alone.
        operations["simplify"] = operations.get("simplify", 0.1) * (1 + 4 * size / self.max_nodes)
        done = 0
        if other is not None and self.rng.random() < crossover_rate:
            done += self.edit(function, other, "crossover")
        for _ in range(edits * 4):
            if done >= edits:
                break
            done += self.edit(function, other, _weighted(self.rng, list(operations.items())))
        if not done:
            return None
        # Judged as text: what is unparsed, parsed back and compiled is what the engine will see.
        reparsed = _reparse(ast.fix_missing_locations(function))
        if reparsed is None or _size(reparsed) > self.max_nodes or _depth(reparsed) > self.max_depth:
            return None
        return reparsed


def _free_names(node: ast.AST) -> set[str]:
    bound: set[str] = set()
    for inner in ast.walk(node):
        if isinstance(inner, ast.comprehension):
            bound |= _target_names(inner.target)
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - bound


def _size(node: ast.AST) -> int:
    return sum(1 for _ in ast.walk(node))


def _depth(node: ast.AST) -> int:
    children = list(ast.iter_child_nodes(node))
    return 1 + max((_depth(child) for child in children), default=0)


def body_text(function: ast.FunctionDef) -> str:
    """The statements of ``function`` as a 4-space indented body."""
    return "".join(
        "".join(INDENT + line + "\n" if line else "\n" for line in ast.unparse(stmt).split("\n"))
        for stmt in function.body
    )


# How likely each term is: "uniform" (the default) knows nothing of the problem; "tuned" carries
# the weights of the tables above, set by hand while tuning on deletion codes (index-weighted sums
# and n + 1 favoured): problem knowledge, for comparison only.
PRIORS = ("uniform", "tuned")

MEMORY_SCOPES = 256  # islands remembered (the least recently sampled for is forgotten first); experiments: 32
MEMORY_PER_SCOPE = 20_000  # fingerprints remembered per island or experiment

RESTART_REQUESTS = 3  # an island's requests without a new better parent that double the restart weight
RESTART_MAX = 4.0  # ... at most this many times the usual

DEFAULT_WEIGHTS: dict[str, float] = {
    "perturb": 0.1, "swap": 0.15, "replace": 0.15, "insert": 0.15, "wrap": 0.25, "simplify": 0.1, "drop": 0.02,
    "fresh": 0.3,
}


class MutationSampler:
    """``type: mutation``: ``request.samples`` candidates, each 1..max_edits structural edits of a parent."""

    name = "mutation"

    def __init__(self, max_nodes: int = 80, max_depth: int = 12, crossover_rate: float = 0.15,
                 max_edits: int = 3, weights: dict[str, float] | None = None, attempts: int = 40,
                 term_wrap_rate: float = 0.5, prior: str = "uniform", probe: bool = True,
                 reverse: bool = True, remember: bool = True, novelty: float = 0.75, restart: bool = True) -> None:
        if prior not in PRIORS:
            raise ValueError(f"unknown mutation prior {prior!r}; known: {', '.join(PRIORS)}")
        self.prior = prior
        self.probe = bool(probe)
        self.reverse = bool(reverse)
        self.remember = bool(remember)
        if not 0.0 <= float(novelty) <= 1.0:
            raise ValueError(f"mutation novelty must be in [0, 1], not {novelty!r}")
        self.novelty = float(novelty)
        self.restart = bool(restart)
        # Per scope: the better parents it was asked for, and the requests since a new one came.
        self._progress: OrderedDict[str, tuple[set[str], int]] = OrderedDict()
        # What was given where: fingerprint -> body, per island (scope) and per experiment.
        self._islands: OrderedDict[str, OrderedDict[tuple[float, ...], str]] = OrderedDict()
        self._experiments: OrderedDict[str, OrderedDict[tuple[float, ...], str]] = OrderedDict()
        self.probe_runs = 0  # sandbox runs spent probing, over this sampler's life
        self.max_nodes = int(max_nodes)
        self.max_depth = int(max_depth)
        self.crossover_rate = float(crossover_rate)
        self.max_edits = max(1, int(max_edits))
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown mutation weights: {', '.join(sorted(unknown))}")
        self.attempts = int(attempts)
        self.term_wrap_rate = float(term_wrap_rate)

    def sample(self, request: SampleRequest) -> SampleResult:
        started = time.perf_counter()
        signature = parse_signature(request.header)
        rng = random.Random(_seed(request))
        parents = [f for f in (parse_function(p) for p in request.parents) if f is not None]
        if not parents:
            # Nothing to edit: start from a constant, as a spec's initial program does.
            parents = [_function(request.header, "return 0.0")]
        mutator = self._mutator(request, signature, rng)
        seen = {_canonical(p) for p in parents}
        probes = prober(request.header, request.function_name, signature) if self.probe else None
        runs = probes.runs if probes is not None else 0
        remember = probes is not None and self.remember and bool(request.scope)
        behaviours = self._known(request, parents, probes, remember)
        # Orders known per probe group: a candidate ordering most groups like some known program
        # (of those, 40 % were behaviour duplicates on deletion codes against 3 % of the others)
        # differs from it only on inputs the problem may never use.
        groups: list[set[float]] = []
        for known in behaviours:
            _note_groups(groups, known)
        needed = math.ceil(self.novelty * len(groups))  # new groups a candidate needs
        bodies: list[str] = []
        spare: list[str] = []  # valid candidates that repeat one already given: best effort fill
        similar: list[str] = []  # new text that orders the probe inputs like a parent or an earlier one
        near: list[tuple[int, int, str, tuple[float, ...]]] = []  # new orders, in too few groups
        reversal = _reversed(parents[-1]) if self.reverse else None
        first = [reversal] if reversal is not None and _size(reversal) <= self.max_nodes else []
        for _ in range(self.attempts * max(1, request.samples)):
            if len(bodies) >= request.samples:
                break
            candidate = first.pop() if first else self._one(mutator, parents, rng)
            if candidate is None:
                continue
            canonical = _canonical(candidate)
            text = body_text(candidate)
            if canonical in seen:
                spare.append(text)
                continue
            seen.add(canonical)
            behaviour = probes.fingerprint(text) if probes is not None else None
            if behaviour is not None and (behaviour in behaviours or not_worth_evaluating(behaviour)):
                similar.append(text)
                continue
            if behaviour is not None:
                fresh_groups = _new_groups(groups, behaviour)
                if fresh_groups < needed:
                    near.append((-fresh_groups, len(near), text, behaviour))
                    continue
                behaviours.add(behaviour)
                _note_groups(groups, behaviour)
                if remember:
                    text = self._remember(request.scope, behaviour, text)
            bodies.append(text)
        self._give_near(request, near, behaviours, bodies, remember)
        while len(bodies) < request.samples:
            bodies.append(similar.pop() if similar else spare.pop() if spare else body_text(parents[-1]))
        runs = probes.runs - runs if probes is not None else 0
        self.probe_runs += runs
        return SampleResult(bodies=bodies, seconds=time.perf_counter() - started, model="mutation",
                            sandbox_runs=runs)

    def _give_near(self, request: SampleRequest, near: list[tuple[int, int, str, tuple[float, ...]]],
                   behaviours: set[tuple[float, ...]], bodies: list[str], remember: bool) -> None:
        """Fills ``bodies`` up with the candidates of new orders in too few probe groups, the most
        novel first."""
        for _, _, text, behaviour in sorted(near):
            if len(bodies) < request.samples and behaviour not in behaviours:
                behaviours.add(behaviour)
                bodies.append(self._remember(request.scope, behaviour, text) if remember else text)

    def _known(self, request: SampleRequest, parents: list[ast.FunctionDef], probes: Prober | None,
               remember: bool) -> set[tuple[float, ...]]:
        """The orders not to give again: the parents', and with memory those given to this island."""
        found = {f for p in parents if probes is not None and (f := probes.fingerprint(body_text(p))) is not None}
        if remember:
            found |= _remembered(self._islands, request.scope, MEMORY_SCOPES).keys()
        return found

    def _mutator(self, request: SampleRequest, signature: Signature, rng: random.Random) -> Mutator:
        weights = self.weights
        stale = self._stale(request) if self.restart else 0
        if stale:  # the island is stuck: restarts (a new top-level expression) more often
            weights = {**weights, "fresh": weights["fresh"] * min(RESTART_MAX, 1 + stale / RESTART_REQUESTS)}
        return Mutator(signature, rng, self.max_nodes, self.max_depth, weights, self.term_wrap_rate, prior=self.prior)

    def _stale(self, request: SampleRequest) -> int:
        """Requests for this scope (island) in a row whose better parent was the better parent of
        an earlier one: no new program has come up there since. 0 without a scope."""
        if not request.scope or not request.parents:
            return 0
        better = request.parents[-1]
        seen, stale = self._progress.pop(request.scope, (set(), 0))
        stale = stale + 1 if better in seen else 0
        seen.add(better)
        self._progress[request.scope] = (seen, stale)  # the most recent last: the oldest forgotten first
        while len(self._progress) > MEMORY_SCOPES:
            self._progress.popitem(last=False)
        return stale

    def _remember(self, scope: str, behaviour: tuple[float, ...], text: str) -> str:
        """Notes that ``scope`` (``experiment/island/version``) is given ``text`` ordering the probe
        inputs as ``behaviour``. Returns the text to give: an earlier one of the same order given to
        another island of the experiment, which the engine evaluated (or is evaluating) once already
        and gives this island at no cost; else ``text``."""
        known = _remembered(self._experiments, scope.rsplit("/", 2)[0], MEMORY_SCOPES // 8)
        given = _remembered(self._islands, scope, MEMORY_SCOPES)
        text = given[behaviour] = known.setdefault(behaviour, text)
        for memory in (given, known):
            while len(memory) > MEMORY_PER_SCOPE:
                memory.popitem(last=False)
        return text

    def _one(self, mutator: Mutator, parents: list[ast.FunctionDef], rng: random.Random) -> ast.FunctionDef | None:
        # Parents come in ascending score order: the better one is edited more often.
        index = rng.choices(range(len(parents)), weights=[2.0**i for i in range(len(parents))])[0]
        others = [p for i, p in enumerate(parents) if i != index]
        other = rng.choice(others) if others else None
        candidate = mutator.mutate(parents[index], other, self.crossover_rate, self.max_edits)
        if candidate is None:
            return None
        # A function that reads none of its arguments is a constant: not worth an evaluation. Int
        # arguments are mostly sizes, fixed over one evaluation's calls (n, s): one reading only
        # them is a constant too, when there are others (the sequence, the item) to read.
        signature = mutator.signature
        varying = set(signature.seqs + signature.arrays + signature.floats + signature.others)
        if not (varying or set(signature.ints)) & _free_names(candidate):
            return None
        return candidate


def _note_groups(groups: list[set[float]], fingerprint: tuple[float, ...]) -> None:
    """Adds a fingerprint's per-group orders to ``groups`` (one set of order hashes per probe group)."""
    while len(groups) < len(fingerprint):
        groups.append(set())
    for known, value in zip(groups, fingerprint, strict=False):
        known.add(value)


def _new_groups(groups: list[set[float]], fingerprint: tuple[float, ...]) -> int:
    """In how many probe groups ``fingerprint`` orders the inputs unlike every known program."""
    return sum(1 for index, value in enumerate(fingerprint) if index >= len(groups) or value not in groups[index])


def _reversed(parent: ast.FunctionDef) -> ast.FunctionDef | None:
    """``parent`` with its order reversed: every value it returns negated (``-x``; ``x`` where it
    returned ``-x``). None when it returns nothing to negate."""
    function = copy.deepcopy(parent)
    changed = False
    for node in _own_nodes(function):
        if isinstance(node, ast.Return) and node.value is not None:
            value = node.value
            if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub):
                node.value = value.operand
            else:
                node.value = ast.UnaryOp(ast.USub(), value)
            changed = True
    return _reparse(ast.fix_missing_locations(function)) if changed else None


def _own_nodes(function: ast.FunctionDef) -> Iterator[ast.AST]:
    """The nodes of ``function``'s body, not those of functions or lambdas defined in it."""
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            stack.extend(ast.iter_child_nodes(node))


def _remembered(store: OrderedDict[str, OrderedDict[tuple[float, ...], str]], key: str,
                limit: int) -> OrderedDict[tuple[float, ...], str]:
    """``store[key]``, made empty when new; the least recently used keys beyond ``limit`` forgotten."""
    memory = store.get(key)
    if memory is None:
        memory = store[key] = OrderedDict()
        while len(store) > limit:
            store.popitem(last=False)
    store.move_to_end(key)
    return memory


def _function(header: str, statement: str) -> ast.FunctionDef:
    function = parse_function(header.rstrip() + "\n" + INDENT + statement + "\n")
    assert function is not None
    return function


def _canonical(function: ast.FunctionDef) -> str:
    body = list(function.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return "\n".join(ast.unparse(stmt) for stmt in body)


def _reparse(function: ast.FunctionDef) -> ast.FunctionDef | None:
    """``function`` unparsed, parsed back and compiled; None when any step fails."""
    try:
        source = ast.unparse(function)
        compile(source, "<candidate>", "exec")
    except (SyntaxError, ValueError, RecursionError, TypeError, AttributeError):
        return None
    return parse_function(source)


def _seed(request: SampleRequest) -> int:
    """The random seed: the request's seed mixed with its parents, so equal seeds on different
    parents still explore differently, and one request always gives the same answer."""
    text = "\0".join([str(request.seed), request.header, *request.parents])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _iter_kwargs(config: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    allowed = {"max_nodes", "max_depth", "crossover_rate", "max_edits", "weights", "attempts", "term_wrap_rate",
               "prior", "probe", "reverse", "remember", "novelty", "restart"}
    for key, value in config.items():
        if key not in allowed:
            raise ValueError(f"unknown mutation sampler option {key!r}; known: {', '.join(sorted(allowed))}")
        yield key, value


@register("mutation")
def make_mutation_sampler(config: dict[str, Any]) -> MutationSampler:
    return MutationSampler(**dict(_iter_kwargs(config)))
